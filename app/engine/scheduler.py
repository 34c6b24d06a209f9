"""Continuous batching: which sequences run in the next step, and how many tokens each. Pure Python.

Every step, in this order, until the step's token budget is spent:
1. every decoding sequence gets one token (running streams are never starved by prefill);
2. sequences part-way through their prompt get their next chunk (chunked prefill);
3. waiting sequences are admitted in arrival order while a KV slot and a running place are free.

While any sequence decodes, long prompts (more than `max_prefill_tokens_while_decoding` tokens
left) share at most that many tokens of the step (a fixed setting, or set before each step by
the engine from measured step times: prefill_pacer.py). A long prompt then arrives in chunks,
so the gap it adds between the running streams' tokens stays a small multiple of a plain
decode step. Short prompts still go whole within the step budget (a burst of them is admitted at
once), and with nothing decoding a long prompt gets the whole budget (the fastest first token).
vLLM's long_prefill_token_threshold works the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from app.engine.kv_cache import SlotAllocator, SlotMove
from app.engine.sequence import FinishReason, Sequence, Status


@dataclass
class ScheduledBatch:
    """One step's work: (sequence, number of tokens) pairs, decodes first, plus slot moves."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    moves: list[SlotMove] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)

    @property
    def num_decode(self) -> int:
        return sum(1 for seq, n in self.items if n == 1 and seq.is_decoding)

    def samples(self, seq: Sequence, n: int) -> bool:
        """A sequence samples a new token when this step reaches its last token."""
        return seq.num_computed + n == seq.num_tokens


class Scheduler:
    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        slots: SlotAllocator,
        eos_token_id: int,
        max_prefill_tokens_while_decoding: int | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_tokens_while_decoding = (
            max_prefill_tokens_while_decoding or max_num_batched_tokens
        )
        self.slots = slots
        self.eos_token_id = eos_token_id
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._moves: list[SlotMove] = []

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status is Status.RUNNING:
            self._release(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = FinishReason.ABORT

    def schedule(self, now: float) -> ScheduledBatch:
        batch = ScheduledBatch(moves=self._moves)
        self._moves = []
        budget = self.max_num_batched_tokens
        # decode
        for seq in sorted(self.running, key=lambda s: s.slot or 0):
            if seq.is_decoding:
                batch.items.append((seq, 1))
                budget -= 1
        threshold = self.max_prefill_tokens_while_decoding
        long_budget = threshold if batch.items else budget

        def chunk(seq: Sequence) -> int:
            nonlocal budget, long_budget
            left = seq.num_tokens - seq.num_computed
            n = min(left, budget, long_budget) if left > threshold else min(left, budget)
            budget -= n
            if left > threshold:
                long_budget -= n
            return n

        # continue chunked prefills
        for seq in self.running:
            if not seq.is_decoding and (n := chunk(seq)) > 0:
                batch.items.append((seq, n))
        # admit, in arrival order (a long prompt with no room this step waits at the head)
        while (
            self.waiting
            and budget > 0
            and self.slots.num_free > 0
            and len(self.running) < self.max_num_seqs
            and (self.waiting[0].num_tokens <= threshold or long_budget > 0)
        ):
            seq = self.waiting.popleft()
            self.slots.allocate(seq)
            seq.status = Status.RUNNING
            seq.first_scheduled_time = now
            self.running.append(seq)
            batch.items.append((seq, chunk(seq)))
        return batch

    def postprocess(self, batch: ScheduledBatch, sampled: list[int]) -> list[Sequence]:
        """Advance sequences by the step's work and sampled tokens; returns those that finished."""
        finished: list[Sequence] = []
        new_tokens = iter(sampled)
        for seq, n in batch.items:
            samples = batch.samples(seq, n)
            seq.num_computed += n
            if not samples:
                continue
            token = next(new_tokens)
            seq.token_ids.append(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                seq.status = Status.FINISHED
                seq.finish_reason = reason
                finished.append(seq)
        # Release only now: a release may move another sequence's cache, and the move must
        # cover every position this step wrote for it.
        for seq in finished:
            self._release(seq)
        return finished

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        # Below min_tokens the sampler masks EOS and stop ids, so this only fires past it.
        if seq.num_output_tokens > p.min_tokens:
            is_eos = token == self.eos_token_id and not p.ignore_eos
            if is_eos or token in p.stop_token_ids:
                return FinishReason.STOP
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.slots.slot_len:
            return FinishReason.LENGTH
        return None

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        move = self.slots.free(seq)
        if move is not None:
            self._moves.append(move)
