"""EngineCore: requests in, one step at a time: schedule -> launch -> collect the tokens."""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

from app.engine.client.validation import ModelLimits
from app.engine.config import EngineConfig
from app.engine.core.kv_cache import KVCacheManager
from app.engine.core.prefill_pacer import PrefillPacer
from app.engine.core.scheduler import PLACEHOLDER, ScheduledBatch, Scheduler
from app.engine.core.sequence import Sequence
from app.engine.protocol import (
    FINISH_CODES,
    AbortRequest,
    AddRequest,
    StepResult,
    StepStats,
    TokenLogprobs,
)
from app.engine.worker.model_runner import ModelRunner
from app.engine.worker.step_io import Launched, PromptScores


class EngineCore:
    """Owns the model runner, the scheduler and the live requests. Not thread-safe."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)
        model_cfg = self.runner.model.config
        self.limits = ModelLimits(model_cfg.vocab_size, self.runner.max_model_len)
        self.eos_token_id = model_cfg.eos_token_id
        self.kv = KVCacheManager(
            self.runner.num_blocks, self.runner.block_size, enable_prefix_cache=config.prefix_cache
        )
        self.scheduler = Scheduler(
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self.kv,
            self.eos_token_id,
            self.runner.max_model_len,
            config.max_prefill_tokens_while_decoding,
        )
        # Without a fixed cap, the chunk of a long prompt follows measured step times.
        self.pacer = (
            PrefillPacer(initial=64, low=16, high=config.max_num_batched_tokens)
            if config.max_prefill_tokens_while_decoding is None
            else None
        )
        self.requests: dict[str, Sequence] = {}
        self._aborted: list[Sequence] = []  # reported (token -1, "abort") by the next step
        # With async scheduling, the step launched last, whose tokens the next call collects.
        self._in_flight: _InFlight | None = None
        # Live requests with penalties: while any is, each step collects the previous one's
        # tokens before it launches (penalties read the output so far on the host).
        self._num_penalized = 0
        # This thread's CPU time at the end of the last reported step: what the loop spends
        # outside the model (commands, scheduling, outputs, encoding) is measured from it.
        self._cpu_mark = time.thread_time()

    def add_request(self, request: AddRequest) -> None:
        """Schedule a request validated by the engine client (validate_request). Only what
        guards the worker's own memory is checked again: ids index the embedding table, and a
        sequence must fit max_model_len."""
        prompt_ids, params = request.prompt_ids, request.params
        assert request.request_id not in self.requests, request.request_id
        assert (
            len(prompt_ids) > 0 and len(prompt_ids) + params.max_tokens <= self.limits.max_model_len
        )
        assert all(0 <= t < self.limits.vocab_size for t in prompt_ids)
        seq = Sequence(
            request.request_id,
            list(prompt_ids),
            len(prompt_ids),
            params,
            time.monotonic(),
            handle=request.handle,
        )
        if params.prompt_logprobs is not None:  # filled chunk by chunk; nothing predicts [0]
            seq.prompt_logprobs = [None] * len(prompt_ids)
        self.requests[request.request_id] = seq
        self.scheduler.add(seq)
        self._num_penalized += params.has_penalties

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request; its blocks are free before the next step. False if it is unknown."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
        self._num_penalized -= seq.params.has_penalties
        self.scheduler.abort(seq)
        self._aborted.append(seq)
        return True

    def apply(self, msg: AddRequest | AbortRequest) -> None:
        """One command from the engine client (the worker loop and the in-process LLM)."""
        if isinstance(msg, AddRequest):
            self.add_request(msg)
        else:
            self.abort_request(msg.request_id)

    def has_unfinished(self) -> bool:
        return (
            self.scheduler.num_unfinished > 0 or bool(self._aborted) or self._in_flight is not None
        )

    def step(self) -> StepResult:
        """Schedule and launch a step; report the tokens of the step whose tokens are now known.

        Without async scheduling that is the step just launched. With it, it is the one
        launched by the previous call: the next step is scheduled and its inputs prepared while
        the device still runs this one, and its tokens are collected after. A step whose rows
        need the previous tokens on the host (penalties read the output so far) waits for them
        first."""
        start = time.perf_counter()
        rows = _Rows()
        for seq in self._aborted:
            rows.add_aborted(seq)
        self._aborted = []
        pending, self._in_flight = self._in_flight, None
        if pending is not None and self._num_penalized:
            self._collect(pending, rows)
            pending = None
        if self.pacer is not None:
            self.scheduler.max_prefill_tokens_while_decoding = self.pacer.limit
        before = (self.kv.num_queries, self.kv.num_hits, self.scheduler.num_preemptions)
        batch = self.scheduler.schedule(time.monotonic())
        num_decode, num_tokens = batch.num_decode, batch.num_tokens
        launched: _InFlight | None = None
        if batch.items:
            previous = pending.run if pending is not None else None
            run = self.runner.launch(batch, previous)
            launched = _InFlight(batch, self.scheduler.advance(batch), run)
        if pending is not None:
            self._collect(pending, rows)
        if launched is not None:
            if self.config.async_scheduling:
                self._in_flight = launched
            else:
                self._collect(launched, rows)
        elif pending is None and not rows.handles:
            self._cpu_mark = time.thread_time()  # an idle turn of the loop is not host work
            return StepResult(array("q"), array("q"), b"")
        seconds = time.perf_counter() - start
        cpu = time.thread_time()
        host = cpu - self._cpu_mark - self.runner.take_model_cpu_seconds()
        self._cpu_mark = cpu
        if self.pacer is not None and batch.items:
            self.pacer.observe(seconds, num_decode, num_tokens - num_decode)
        stats = StepStats(
            step_seconds=seconds,
            num_decode_tokens=num_decode,
            num_prefill_tokens=num_tokens - num_decode,
            batch_size=len(batch.items),
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_used=self.kv.num_used,
            kv_blocks_total=self.kv.num_blocks,
            prefix_cache_queries=self.kv.num_queries - before[0],
            prefix_cache_hits=self.kv.num_hits - before[1],
            num_preemptions=self.scheduler.num_preemptions - before[2],
            host_seconds=max(0.0, host),
        )
        return rows.result(stats)

    def _collect(self, flight: _InFlight, rows: _Rows) -> None:
        """Wait for a launched step's tokens and account for them."""
        out = self.runner.collect(flight.run)
        items = flight.batch.items
        for scores in out.prompt_scores:
            _record_prompt_logprobs(items[scores.item][0], scores)
        dropped, finished = self.scheduler.resolve(flight.batch, flight.slots, out.tokens)
        tokens, logprobs = out.tokens, out.logprobs  # one per sampled item, in item order
        slots = flight.slots
        if len(tokens) == len(items) and not dropped:  # every item sampled and counts
            rows.add_sampled([seq for seq, _ in items], slots, tokens, logprobs)
        else:
            counted = [
                (k, item)
                for k, item in enumerate(i for i, at in enumerate(slots) if at >= 0)
                if items[item][0] not in dropped
            ]
            rows.add_sampled(
                [items[item][0] for _, item in counted],
                [slots[item] for _, item in counted],
                [tokens[k] for k, _ in counted],
                [logprobs[k] for k, _ in counted],
            )
        for seq in finished:
            del self.requests[seq.request_id]
            self._num_penalized -= seq.params.has_penalties


@dataclass
class _InFlight:
    """A launched step: its batch, where each item's token goes (Scheduler.advance), and the
    model runner's handle on its outputs."""

    batch: ScheduledBatch
    slots: list[int]
    run: Launched


def _record_prompt_logprobs(seq: Sequence, scores: PromptScores) -> None:
    assert seq.prompt_logprobs is not None  # made by add_request when params ask for them
    end = scores.first_target + len(scores.entries)
    seq.prompt_logprobs[scores.first_target : end] = scores.entries


_FINISH_CODE = {reason: code for code, reason in enumerate(FINISH_CODES)}


class _Rows:
    """One step's outputs, built row by row into StepResult's arrays."""

    def __init__(self) -> None:
        self.handles: array[int] = array("q")
        self.tokens: array[int] = array("q")
        self.finish = bytearray()
        self.scheduled: list[tuple[int, float]] = []
        self.cached_tokens: list[tuple[int, int]] = []
        self.logprobs: list[tuple[int, TokenLogprobs]] = []
        self.prompt_logprobs: list[tuple[int, tuple[TokenLogprobs | None, ...]]] = []

    def add_aborted(self, seq: Sequence) -> None:
        """A row with no token (-1) that ends an aborted request; if it never produced a token,
        its first-row facts (when it was scheduled, its cached prompt tokens) go with it."""
        row = len(self.handles)
        self.handles.append(seq.handle)
        self.tokens.append(-1)
        self.finish.append(_FINISH_CODE[seq.finish_reason])
        # (a placeholder is a token still in flight: it is dropped with the abort)
        output = seq.token_ids[seq.num_prompt_tokens :]
        if not output or output == [PLACEHOLDER]:
            if seq.first_scheduled_time is not None:
                self.scheduled.append((row, seq.first_scheduled_time))
            if seq.num_cached_tokens:
                self.cached_tokens.append((row, seq.num_cached_tokens))

    def add_sampled(
        self,
        seqs: list[Sequence],
        slots: list[int],
        tokens: list[int],
        logprobs: list[TokenLogprobs | None],
    ) -> None:
        """A row for each sequence and its new token (at index slots[i] of its token_ids), as
        a few list passes rather than a call per row (this runs for every row of every step);
        first tokens carry the first-row facts, prompt logprobs included."""
        start = len(self.handles)
        self.handles.extend([seq.handle for seq in seqs])
        self.tokens.extend(tokens)
        self.finish.extend([_FINISH_CODE[seq.finish_reason] for seq in seqs])
        firsts = [i for i, s in enumerate(seqs) if slots[i] == s.num_prompt_tokens]
        for i in firsts:
            seq, row = seqs[i], start + i
            if seq.first_scheduled_time is not None:
                self.scheduled.append((row, seq.first_scheduled_time))
            if seq.num_cached_tokens:
                self.cached_tokens.append((row, seq.num_cached_tokens))
            if seq.prompt_logprobs is not None:
                self.prompt_logprobs.append((row, tuple(seq.prompt_logprobs)))
        if any(lp is not None for lp in logprobs):
            self.logprobs += [(start + i, lp) for i, lp in enumerate(logprobs) if lp is not None]

    def result(self, stats: StepStats | None) -> StepResult:
        return StepResult(
            self.handles,
            self.tokens,
            bytes(self.finish),
            tuple(self.scheduled),
            tuple(self.cached_tokens),
            tuple(self.logprobs),
            tuple(self.prompt_logprobs),
            stats,
        )
