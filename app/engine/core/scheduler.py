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

Prefix sharing (share_prefixes): a prompt that begins with at least MIN_SHARED_PREFIX tokens a
running sequence has already cached (the n choices of one request, a common system prompt)
takes those keys and values by a slot copy instead of computing them again. If the running
sequence is still computing that prefix, the newcomer waits for it at the head of the queue.
A request that asks for prompt logprobs computes its whole prompt (it needs every row).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from app.engine.core.kv_cache import SlotAllocator, SlotMove
from app.engine.core.sequence import Sequence, Status
from app.engine.protocol import FinishReason

# Below this, a copy saves too little prefill to be worth the search and the wait.
MIN_SHARED_PREFIX = 16


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
        slots: SlotAllocator,
        eos_token_id: int,
        max_prefill_tokens_while_decoding: int | None = None,
        share_prefixes: bool = False,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_prefill_tokens_while_decoding = (
            max_prefill_tokens_while_decoding or max_num_batched_tokens
        )
        self.slots = slots
        self.eos_token_id = eos_token_id
        self.share_prefixes = share_prefixes
        self.num_shared_tokens = 0  # prompt tokens taken from another sequence's cache, in all
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
            donor, shared = self._prefix_donor(self.waiting[0])
            if donor is not None and shared == 0:
                break  # its prefix is being computed by a running sequence: take it next step
            seq = self.waiting.popleft()
            self.slots.allocate(seq)
            if donor is not None and donor.slot is not None and seq.slot is not None:
                # Applied before this step's forward pass, after the packing moves before it.
                batch.moves.append(SlotMove(src=donor.slot, dst=seq.slot, length=shared))
                seq.num_computed = shared
                self.num_shared_tokens += shared
            seq.status = Status.RUNNING
            seq.first_scheduled_time = now
            self.running.append(seq)
            batch.items.append((seq, chunk(seq)))
        return batch

    def _prefix_donor(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence with the longest cached prefix of seq's prompt, and how many
        of those tokens seq can take now: 0 means the donor is still computing them (wait).
        (None, 0) when nothing is worth sharing."""
        if not self.share_prefixes or seq.params.prompt_logprobs is not None:
            return None, 0
        # The prompt's last token is always computed here: its row gives the first logits.
        wanted = seq.token_ids[: seq.num_prompt_tokens - 1]
        if len(wanted) < MIN_SHARED_PREFIX:
            return None, 0
        best: tuple[Sequence | None, int, int] = (None, 0, 0)  # donor, usable, common
        opening = wanted[:MIN_SHARED_PREFIX]
        for other in self.running:
            if other.token_ids[:MIN_SHARED_PREFIX] != opening:
                continue  # the usual case: differs early, so no whole-prompt comparison
            common = _common_prefix(wanted, other.token_ids)
            if common < MIN_SHARED_PREFIX:
                continue
            usable = min(common, other.num_computed)
            if (usable, common) > best[1:]:
                best = (other, usable, common)
        donor, usable, common = best
        if donor is None:
            return None, 0
        if usable >= MIN_SHARED_PREFIX:
            return donor, usable
        # The donor has not cached enough yet; wait only while it is still prefilling.
        return (donor, 0) if donor.num_computed < donor.num_prompt_tokens else (None, 0)

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


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # siblings share the whole prompt: one C-level comparison
        return n
    return next(i for i in range(n) if a[i] != b[i])
