"""Continuous batching: which sequences run in the next step, and how many tokens each. No torch.

Every step, in this order, until the step's token budget is spent:
1. every decoding sequence gets one token (running streams are never starved by prefill);
2. sequences part-way through their prompt get their next chunk (chunked prefill);
3. waiting sequences are admitted in arrival order while their KV blocks and a running place
   are free.

While any sequence decodes, long prompts (more than `max_prefill_tokens_while_decoding` tokens
left) share at most that many tokens of the step (a fixed setting, or set before each step by
the engine from measured step times: prefill_pacer.py). A long prompt then arrives in chunks,
so the gap it adds between the running streams' tokens stays a small multiple of a plain
decode step. Short prompts still go whole within the step budget (a burst of them is admitted at
once), and with nothing decoding a long prompt gets the whole budget (the fastest first token).
vLLM's long_prefill_token_threshold works the same way.

KV blocks (kv_cache.py): a waiting sequence is admitted only when every block its tokens need
fits with a watermark of free blocks to spare (the blocks that let running sequences grow), and
takes the longest cached prefix of its tokens from the prefix cache. If that prefix's next block
is being computed by a running sequence (the n choices of one request, a burst with one system
prompt), it waits at the head of the queue for a step and then takes it. A request that asks
for prompt logprobs computes its whole prompt (it needs every row).

When a decoding sequence needs a block and none is free, the newest running sequence is
preempted: its blocks are freed and it goes back to the front of the queue with its generated
tokens, to be recomputed (mostly from the prefix cache) when blocks free up. Nothing is dropped
and nothing over-commits: a step only schedules tokens whose blocks are held.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.engine.core.kv_cache import KVCacheManager
from app.engine.core.sequence import Sequence, Status
from app.engine.protocol import FinishReason

# A sampled token not known yet (see Scheduler.advance): never a vocabulary id.
PLACEHOLDER = -1

# Free blocks kept back at admission so running sequences can grow without preempting at once
# (vLLM's watermark, 1% of the pool).
WATERMARK = 0.01


@dataclass
class ScheduledBatch:
    """One step's work: (sequence, number of tokens) pairs, decodes first."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    # KVCacheManager.tables as of this step: row Sequence.kv_row is that sequence's block table
    block_tables: np.ndarray[Any, Any] = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)

    @property
    def num_decode(self) -> int:
        """Rows that feed back a generated token. A prompt's last token alone (a final chunk of
        one, or all that is left after a shared prefix) is prompt work, not decoding."""
        return sum(
            1 for seq, n in self.items if n == 1 and seq.num_computed >= seq.num_prompt_tokens
        )

    def samples(self, seq: Sequence, n: int) -> bool:
        """A sequence samples a new token when this step reaches its last token."""
        return seq.num_computed + n == seq.num_tokens


class Scheduler:
    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        kv: KVCacheManager,
        eos_token_id: int,
        max_model_len: int,
        max_prefill_tokens_while_decoding: int | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_tokens_while_decoding = (
            max_prefill_tokens_while_decoding or max_num_batched_tokens
        )
        self.kv = kv
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.watermark_blocks = int(WATERMARK * kv.num_blocks)
        self.num_preemptions = 0  # in all
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is preempted first

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
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        preempted_before = self.num_preemptions
        # decode, oldest first: a sequence that cannot get a block preempts the newest
        block_size = self.kv.block_size
        prefilling: list[Sequence] = []  # running sequences still in their prompt, in order
        for seq in list(self.running):
            # (is_decoding inlined, and kv.grow called only for a full block: this runs for
            # every row)
            if seq.status is not Status.RUNNING:
                continue  # preempted by an older one in this loop
            if seq.num_computed != len(seq.token_ids) - 1:
                prefilling.append(seq)
                continue
            if seq.num_computed >= len(seq.block_table) * block_size:  # its last block is full
                while not self.kv.grow(seq):
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is seq:
                        break
            if seq.status is Status.RUNNING:
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

        # continue chunked prefills (all still running: a decode preempts the newest running
        # sequence, itself or one the loop has not reached, never one it has passed)
        for seq in prefilling:
            if (n := chunk(seq)) > 0:
                batch.items.append((seq, n))
        # admit, in arrival order (a long prompt with no room this step waits at the head)
        # (not in a step that had to preempt: the blocks it freed are for the running)
        while (
            self.waiting
            and self.num_preemptions == preempted_before
            and budget > 0
            and len(self.running) < self.max_num_seqs
            and (self.waiting[0].num_tokens <= threshold or long_budget > 0)
        ):
            seq = self.waiting[0]
            plan = self.kv.plan(seq, use_cache=seq.params.prompt_logprobs is None)
            if plan.prefix_in_flight:
                break  # a running sequence is computing its prefix: take it next step
            # With nothing running, the watermark would only stall a prompt that fits.
            if not self.kv.can_admit(plan, self.watermark_blocks if self.running else 0):
                break
            self.waiting.popleft()
            self.kv.admit(seq, plan)
            if seq.num_output_tokens == 0:
                seq.num_cached_tokens = seq.num_computed
            seq.status = Status.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
            self.running.append(seq)
            batch.items.append((seq, chunk(seq)))
        batch.block_tables = self.kv.tables.array
        return batch

    def postprocess(self, batch: ScheduledBatch, sampled: list[int]) -> list[Sequence]:
        """Advance sequences by the step's work and sampled tokens; returns those that finished."""
        return self.resolve(batch, self.advance(batch, placeholders=False), sampled)[1]

    def advance(self, batch: ScheduledBatch, placeholders: bool = True) -> list[int]:
        """The step is launched: its tokens' keys and values count as computed, and each
        sequence it samples holds a PLACEHOLDER for the token to come, unless that token is
        certainly its last (max_tokens, the context window). The next step can then be
        scheduled before this one's tokens are known (the engine's async scheduling): it feeds
        the placeholder, whose value the model runner takes on the device. Without
        `placeholders` (one step at a time: resolve comes next) nothing is appended.

        Returns, for each item, the index in its token_ids where its sampled token goes, or -1
        if it samples none: what resolve needs."""
        slots: list[int] = []
        append = slots.append
        last = self.max_model_len - 1
        for seq, n in batch.items:
            # (batch.samples inlined: this runs for every row of every step)
            token_ids = seq.token_ids
            at = len(token_ids)
            computed = seq.num_computed + n
            seq.num_computed = computed
            if computed != at:
                append(-1)
            else:
                append(at)
                if (
                    placeholders
                    and at < last
                    and at + 1 - seq.num_prompt_tokens < seq.params.max_tokens
                ):
                    token_ids.append(PLACEHOLDER)
        return slots

    def resolve(
        self, batch: ScheduledBatch, slots: list[int], sampled: list[int]
    ) -> tuple[list[Sequence], list[Sequence]]:
        """The step's tokens are known (one per item with a slot, in order): each goes where
        advance left its place, full blocks are hashed into the prefix cache, and sequences
        that end here release their blocks. A sequence that ended or was aborted since the step
        was launched takes nothing (its row was wasted work).

        Returns those sequences whose sampled tokens were dropped so (usually none), and the
        sequences that finished."""
        items = batch.items
        if len(sampled) != len(items):  # some items sample nothing (prefill chunks): align
            tokens = iter(sampled)
            sampled = [next(tokens) if at >= 0 else -1 for at in slots]
        dropped: list[Sequence] = []
        finished: list[Sequence] = []
        block_size = self.kv.block_size
        caching = self.kv.enable_prefix_cache
        max_model_len = self.max_model_len
        eos = self.eos_token_id
        finished_status = Status.FINISHED
        for (seq, _), at, token in zip(items, slots, sampled, strict=True):
            # (cache_computed's "nothing new" case and _finish_reason's usual "not yet" inlined:
            # this runs for every row of every step)
            if seq.status is finished_status:
                if at >= 0:
                    dropped.append(seq)
                continue
            if at < 0:
                if caching and seq.num_computed // block_size > len(seq.block_hashes):
                    self.kv.cache_computed(seq)
                continue
            token_ids = seq.token_ids
            if at < len(token_ids):
                token_ids[at] = token
            else:
                token_ids.append(token)
            if caching and seq.num_computed // block_size > len(seq.block_hashes):
                self.kv.cache_computed(seq)  # (before a release below)
            p = seq.params
            num_output = at + 1 - seq.num_prompt_tokens
            if (
                num_output < p.max_tokens
                and at + 1 < max_model_len
                and token not in p.stop_token_ids
                and (token != eos or p.ignore_eos)
            ):
                continue
            reason = self._finish_reason(seq, token, num_output, at + 1)
            if reason is not None:
                del token_ids[at + 1 :]  # the placeholder a step launched since holds, if any
                if seq.status is Status.WAITING:  # preempted since: it holds no blocks
                    self.waiting.remove(seq)
                else:
                    self._release(seq)
                seq.status = Status.FINISHED
                seq.finish_reason = reason
                finished.append(seq)
        return dropped, finished

    def _finish_reason(
        self, seq: Sequence, token: int, num_output: int, num_tokens: int
    ) -> FinishReason | None:
        p = seq.params
        # Below min_tokens the sampler masks EOS and stop ids, so this only fires past it.
        if num_output > p.min_tokens:
            is_eos = token == self.eos_token_id and not p.ignore_eos
            if is_eos or token in p.stop_token_ids:
                return FinishReason.STOP
        if num_output >= p.max_tokens or num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _preempt(self, seq: Sequence) -> None:
        """Free seq's blocks and put it back first in line, generated tokens kept: it is
        recomputed when admitted again."""
        self._release(seq)
        seq.status = Status.WAITING
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
