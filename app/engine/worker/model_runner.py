"""Sequences -> tensors -> forward -> sampled ids. The only engine module that touches the model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from app.engine.config import EngineConfig
from app.engine.core.scheduler import ScheduledBatch
from app.engine.core.sequence import Sequence
from app.engine.protocol import TokenLogprobs
from app.engine.worker import kv_cache_sizing
from app.engine.worker.cuda_graphs import StaticDecode
from app.engine.worker.device import resolve_device, resolve_dtype
from app.engine.worker.host_to_device import to_device
from app.engine.worker.sampler import Sampler, SamplingRow, token_logprobs
from app.model.attention import (
    NULL_BLOCK,
    AttnBatch,
    DecodeRows,
    GatherBuffers,
    KVCache,
    PrefillChunk,
    decode_bias,
    slots_of,
)
from app.model.gpt2 import GPT2
from app.model.matmul import pick_gemm_backend
from app.model.weights import load_gpt2, resolve_model_dir

log = logging.getLogger(__name__)
DEFAULT_THREADS = torch.get_num_threads()  # at import, before any runner changes it
# Prompt rows scored per vocabulary projection: bounds the (rows, V) logits a long prompt's
# scoring holds at once (256 x 50257 fp32 = 51 MB).
SCORE_BLOCK_ROWS = 256


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
    sampling: list[SamplingRow]
    sample_items: list[int]  # index into batch.items of each sampled row
    scoring: list[PromptScoring] = field(default_factory=list)


@dataclass(frozen=True)
class StepOutput:
    """Sampled tokens and logprobs in batch.items order (sampled items only), prompt scores."""

    tokens: list[int]
    logprobs: list[TokenLogprobs | None]
    prompt_scores: list[PromptScores]


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self._model_cpu = 0.0  # see take_model_cpu_seconds
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_dir = resolve_model_dir(config.model)
        self.model: GPT2 = load_gpt2(self.model_dir, self.dtype, self.device)
        mcfg = self.model.config
        wanted = pick_gemm_backend(self.device, self.dtype, config.cpu_gemm, config.quantization)
        self.gemm = self.model.set_gemm_backend(wanted, batch_hint=config.max_num_seqs)
        self.max_model_len = min(config.max_model_len or mcfg.n_positions, mcfg.n_positions)
        self.block_size = config.block_size
        self.max_blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.num_blocks = kv_cache_sizing.num_blocks(
            kv_cache_sizing.Loaded(
                self.model, self.device, self.dtype, self.block_size, self.max_model_len
            ),
            config,
        )
        # One more physical block than the pool hands out: block 0 is the scratch block.
        self.kv = KVCache(
            mcfg.n_layer,
            self.num_blocks + 1,
            mcfg.n_head,
            self.block_size,
            mcfg.head_dim,
            self.dtype,
            self.device,
        )
        # Reused across layers and steps on CPU (see GatherBuffers); CUDA allocates its own.
        self.gather_buffers = GatherBuffers() if self.device.type == "cpu" else None
        self.static_decode: StaticDecode | None = None
        if self.device.type == "cuda" and config.cuda_graphs:
            sizes = [b for b in config.cuda_graph_batch_sizes if b <= config.max_num_seqs]
            self.static_decode = StaticDecode(
                self.model, self.kv, sizes, self.max_blocks_per_seq, capture=True
            )
        self.sampler = Sampler(mcfg.vocab_size, mcfg.eos_token_id, self.device, config.seed)
        log.info(
            "model runner: device=%s dtype=%s gemm=%s, KV %.1f MiB",
            self.device,
            self.dtype,
            self.gemm,
            self.kv.num_bytes / 2**20,
        )
        kv_cache_sizing.log_capacity(self.num_blocks, self.block_size, self.max_model_len)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> StepOutput:
        inputs = self.prepare(batch)
        self._use_threads(self._threads_for(len(inputs.input_ids)))
        cpu = time.thread_time()
        logits, prompt_scores = self.forward(inputs)
        chosen, logprobs = self.sampler(logits, inputs.sampling)
        self._model_cpu += time.thread_time() - cpu
        # Hand results back in batch.items order, which is what the scheduler walks.
        order = sorted(range(len(inputs.sample_items)), key=inputs.sample_items.__getitem__)
        tokens = chosen.tolist()
        return StepOutput([tokens[i] for i in order], [logprobs[i] for i in order], prompt_scores)

    def take_model_cpu_seconds(self) -> float:
        """This thread's CPU seconds in the forward pass and sampling since the last call."""
        spent, self._model_cpu = self._model_cpu, 0.0
        return spent

    def forward(self, inputs: StepInputs) -> tuple[torch.Tensor, list[PromptScores]]:
        """Logits of the rows to sample, and the step's prompt scores: a captured graph for
        plain decode steps (which score nothing), else eager."""
        n = len(inputs.input_ids)
        d = inputs.attn.decode
        if (
            self.static_decode is not None
            and d is not None
            and not inputs.scoring
            and self.static_decode.can_run(n, inputs.attn)
        ):
            logits = self.static_decode.run(inputs.input_ids, inputs.positions, inputs.attn)
            return logits.index_select(0, inputs.sample_rows), []
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.attn, self.kv)
        scores = [self._score_prompt(hidden, s) for s in inputs.scoring]
        if len(inputs.sampling) < n:  # prefill rows that do not sample need no logits
            hidden = hidden.index_select(0, inputs.sample_rows)
        return self.model.compute_logits(hidden), scores

    def _score_prompt(self, hidden: torch.Tensor, s: PromptScoring) -> PromptScores:
        """Logprobs of the prompt tokens these rows predict, SCORE_BLOCK_ROWS rows at a time."""
        entries: list[TokenLogprobs] = []
        for at in range(0, len(s.targets), SCORE_BLOCK_ROWS):
            targets = s.targets[at : at + SCORE_BLOCK_ROWS]
            rows = hidden[s.first_row + at : s.first_row + at + len(targets)]
            logits = self.model.compute_logits(rows)
            top_k = [s.top_k] * len(targets)
            entries += token_logprobs(logits, self._tensor(targets), top_k, with_rank=True)
        return PromptScores(s.item, s.first_target, entries)

    def _threads_for(self, num_tokens: int) -> int:
        """One-row steps run their GEMMs in OpenBLAS, which wants the cores to itself."""
        return 1 if self.gemm == "onednn" and num_tokens == 1 else DEFAULT_THREADS

    def _use_threads(self, n: int) -> None:
        # Sticky, not per step: each set_num_threads cost 12-14 ms here (the OpenMP pool is
        # rebuilt), so it changes only when the kind of step changes.
        if self.device.type == "cpu" and n != torch.get_num_threads():
            torch.set_num_threads(n)

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Flatten the step: single-token rows first (decode attention), then prefill chunks."""
        order = sorted(range(len(batch.items)), key=lambda i: batch.items[i][1] > 1)
        singles = [batch.items[i][0] for i in order if batch.items[i][1] == 1]
        chunks = [batch.items[i] for i in order if batch.items[i][1] > 1]
        ids: list[int] = []
        positions: list[int] = []
        sample_rows: list[int] = []
        sampling: list[SamplingRow] = []
        sample_items: list[int] = []
        scoring: list[PromptScoring] = []
        slots: list[int] = []  # where each row's key and value go
        for item in order:
            seq, n = batch.items[item]
            if batch.samples(seq, n):
                sample_rows.append(len(ids) + n - 1)
                sampling.append(SamplingRow(seq.params, seq.token_ids, seq.num_prompt_tokens))
                sample_items.append(item)
            if seq.params.prompt_logprobs is not None:
                # Positions [first, end) predict prompt tokens first + 1 .. end.
                first = seq.num_computed
                end = min(first + n, seq.num_prompt_tokens - 1)
                if end > first:
                    targets = seq.token_ids[first + 1 : end + 1]
                    scoring.append(
                        PromptScoring(
                            item, len(ids), first + 1, targets, seq.params.prompt_logprobs
                        )
                    )
            ids.extend(seq.token_ids[seq.num_computed : seq.num_computed + n])
            positions.extend(range(seq.num_computed, seq.num_computed + n))
            end = seq.num_computed + n
            slots += slots_of(seq.block_table, seq.num_computed, end, self.block_size)
        attn = AttnBatch(
            slot_mapping=self._tensor(slots),
            num_decode=len(singles),
            decode=self._decode_rows(singles) if singles else None,
            prefills=[self._prefill_chunk(s, n) for s, n in chunks],
        )
        return StepInputs(
            input_ids=self._tensor(ids),
            positions=self._tensor(positions),
            attn=attn,
            sample_rows=self._tensor(sample_rows),
            sampling=sampling,
            sample_items=sample_items,
            scoring=scoring,
        )

    def _prefill_chunk(self, seq: Sequence, n: int) -> PrefillChunk:
        end = seq.num_computed + n
        blocks = seq.block_table[: -(-end // self.block_size)]  # those the chunk reads
        return PrefillChunk(seq.num_computed, n, self._tensor(blocks))

    def _decode_rows(self, singles: list[Sequence]) -> DecodeRows:
        """Each row's blocks up to the longest context of the step, padded with the scratch
        block (masked out by the bias)."""
        width = max(-(-(s.num_computed + 1) // self.block_size) for s in singles)
        tables = [(s.block_table + [NULL_BLOCK] * width)[:width] for s in singles]
        positions = self._tensor([s.num_computed for s in singles])
        return DecodeRows(
            block_tables=self._tensor([b for t in tables for b in t]).view(len(singles), width),
            positions=positions,
            bias=decode_bias(positions + 1, width * self.block_size, self.dtype),
            buffers=self.gather_buffers,
        )

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return to_device(values, torch.long, self.device)
