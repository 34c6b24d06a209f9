"""What a step carries between the model runner and the engine core: the step's inputs, its
launched state on the device, and its outputs. Torch types, no model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.engine.protocol import TokenLogprobs
from app.engine.worker.sampler import SamplingInput
from app.model.attention import AttnBatch


@dataclass
class PromptScoring:
    """The consecutive rows of one sequence in this step whose next token is a prompt token:
    row first_row + i predicts targets[i], the prompt token at position first_target + i."""

    item: int  # index into batch.items
    first_row: int
    first_target: int
    targets: list[int]
    top_k: int


@dataclass(frozen=True)
class PromptScores:
    item: int  # index into batch.items
    first_target: int  # prompt position of entries[0]
    entries: list[TokenLogprobs]


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # (N,)
    positions: torch.Tensor  # (N,)
    attn: AttnBatch
    sample_rows: torch.Tensor  # (M,) rows whose logits are sampled
    sampling: list[SamplingInput]
    sample_items: list[int]  # index into batch.items of each sampled row
    scoring: list[PromptScoring] = field(default_factory=list)


@dataclass(frozen=True)
class StepOutput:
    """Sampled tokens and logprobs in batch.items order (sampled items only), prompt scores."""

    tokens: list[int]
    logprobs: list[TokenLogprobs | None]
    prompt_scores: list[PromptScores]


@dataclass
class Launched:
    """A step queued on the device: its sampled ids (in sampling order); what the host reads
    of it (the ids, and with checks on the device a second row flagging the rows that were no
    distribution), its pinned copy and the event that marks it done (CUDA); what sampling
    reported on the host; the sequences each id belongs to (a later step's placeholders name
    them)."""

    chosen: torch.Tensor
    outputs: torch.Tensor
    host: torch.Tensor | None
    ready: torch.cuda.Event | None
    logprobs: list[TokenLogprobs | None]
    prompt_scores: list[PromptScores]
    sampling: list[SamplingInput]
    sample_items: list[int]

    def row_of(self) -> dict[int, int]:
        """id(sequence) -> its row in `chosen`."""
        return {id(seq): row for row, seq in enumerate(self.sampling)}
