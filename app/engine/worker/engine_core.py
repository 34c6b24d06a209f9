"""EngineCore: requests in, one step at a time: schedule -> run -> postprocess."""

from __future__ import annotations

import time
from array import array

from app.engine.client.validation import ModelLimits
from app.engine.config import EngineConfig
from app.engine.core.kv_cache import KVCacheManager
from app.engine.core.prefill_pacer import PrefillPacer
from app.engine.core.scheduler import Scheduler
from app.engine.core.sequence import Sequence
from app.engine.protocol import (
    FINISH_CODES,
    AbortRequest,
    AddRequest,
    StepResult,
    StepStats,
    TokenLogprobs,
)
from app.engine.worker.model_runner import ModelRunner, PromptScores


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

    def abort_request(self, request_id: str) -> bool:
        """Cancel a request; its blocks are free before the next step. False if it is unknown."""
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
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
        return self.scheduler.num_unfinished > 0 or bool(self._aborted)

    def step(self) -> StepResult:
        start = time.perf_counter()
        rows = _Rows()
        for seq in self._aborted:
            rows.add_aborted(seq)
        self._aborted = []
        if self.pacer is not None:
            self.scheduler.max_prefill_tokens_while_decoding = self.pacer.limit
        before = (self.kv.num_queries, self.kv.num_hits, self.scheduler.num_preemptions)
        batch = self.scheduler.schedule(time.monotonic())
        num_decode, num_tokens = batch.num_decode, batch.num_tokens
        if batch.items:
            sampled = [seq for seq, n in batch.items if seq.num_computed + n == len(seq.token_ids)]
            result = self.runner.execute(batch)
            for scores in result.prompt_scores:
                _record_prompt_logprobs(batch.items[scores.item][0], scores)
            finished = self.scheduler.postprocess(batch, result.tokens)
            rows.add_sampled(sampled, result.logprobs)
            for seq in finished:
                del self.requests[seq.request_id]
        elif not rows.handles:
            self._cpu_mark = time.thread_time()  # an idle turn of the loop is not host work
            return StepResult(array("q"), array("q"), b"")
        seconds = time.perf_counter() - start
        cpu = time.thread_time()
        host = cpu - self._cpu_mark - self.runner.take_model_cpu_seconds()
        self._cpu_mark = cpu
        if self.pacer is not None:
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
        if seq.num_output_tokens == 0:
            if seq.first_scheduled_time is not None:
                self.scheduled.append((row, seq.first_scheduled_time))
            if seq.num_cached_tokens:
                self.cached_tokens.append((row, seq.num_cached_tokens))

    def add_sampled(self, seqs: list[Sequence], logprobs: list[TokenLogprobs | None]) -> None:
        """A row for each sequence and its new token, as a few list passes rather than a call
        per row (this runs for every row of every step); first tokens carry the first-row
        facts, prompt logprobs included."""
        start = len(self.handles)
        self.handles.extend([seq.handle for seq in seqs])
        self.tokens.extend([seq.token_ids[-1] for seq in seqs])
        self.finish.extend([_FINISH_CODE[seq.finish_reason] for seq in seqs])
        firsts = [i for i, s in enumerate(seqs) if len(s.token_ids) - s.num_prompt_tokens == 1]
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
