"""Sequences -> tensors -> forward -> sampled ids. The only engine module that touches the model."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from app.engine.config import EngineConfig
from app.engine.core.scheduler import ScheduledBatch
from app.engine.protocol import TokenLogprobs
from app.engine.worker import kv_cache_sizing
from app.engine.worker.cuda_graphs import StaticDecode
from app.engine.worker.device import inference, resolve_device, resolve_dtype
from app.engine.worker.host_memory import keep_freed_memory
from app.engine.worker.host_to_device import to_device
from app.engine.worker.sampler import Sampler, SamplingInput, token_logprobs
from app.engine.worker.step_io import (
    Launched,
    PromptScores,
    PromptScoring,
    StepInputs,
    StepOutput,
)
from app.model.attention import (
    AttnBatch,
    DecodeRows,
    GatherBuffers,
    KVCache,
    PrefillChunk,
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


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self._model_cpu = 0.0  # see take_model_cpu_seconds
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # each step's logits are reused, not re-mapped (host_memory.py)
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
        # Row L: decode_bias for context length L over every position (CPU float32; 4 MiB at
        # 1,024 positions), so a step's mask is one index (see _decode_rows).
        self.bias_rows: np.ndarray[Any, Any] | None = None
        if self.device.type == "cpu" and self.dtype == torch.float32:
            span = self.max_blocks_per_seq * self.block_size
            visible = np.arange(span)[None, :] < np.arange(span + 1)[:, None]
            self.bias_rows = np.where(visible, np.float32(0), np.float32(-np.inf))
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

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        """One step, start to finish: launch, then collect."""
        return self.collect(self.launch(batch))

    @inference
    def launch(self, batch: ScheduledBatch, previous: Launched | None = None) -> Launched:
        """Prepare the step and queue its forward pass and sampling; on CUDA this returns while
        the device works (its sampled ids are copied into pinned memory behind them). A row
        whose input token is a placeholder (Scheduler.advance) takes the token `previous`
        sampled for that sequence, on the device: the host never waits for it."""
        inputs = self.prepare(batch, previous)
        self._use_threads(self._threads_for(len(inputs.input_ids)))
        cpu = time.thread_time()
        logits, prompt_scores = self.forward(inputs)
        chosen, logprobs = self.sampler(logits, inputs.sampling)
        self._model_cpu += time.thread_time() - cpu
        # Rows the sampler found to be no distribution, when it checks on the device.
        invalid = self.sampler.last_invalid
        outputs = chosen if invalid is None else torch.stack([chosen, invalid.to(chosen.dtype)])
        host: torch.Tensor | None = None
        ready: torch.cuda.Event | None = None
        if chosen.device.type == "cuda":
            host = torch.empty(outputs.shape, dtype=outputs.dtype, pin_memory=True)
            host.copy_(outputs, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        return Launched(
            chosen,
            outputs,
            host,
            ready,
            logprobs,
            prompt_scores,
            inputs.sampling,
            inputs.sample_items,
        )

    def collect(self, run: Launched) -> StepOutput:
        """The launched step's tokens on the host (waiting for the device if it must), with its
        logprobs and prompt scores, in batch.items order."""
        if run.ready is not None and run.host is not None:
            run.ready.synchronize()
            outputs = run.host.tolist()
        else:
            outputs = run.outputs.tolist()
        tokens = outputs if run.outputs.dim() == 1 else outputs[0]
        if run.outputs.dim() == 2 and any(outputs[1]):
            log.error(
                "sampler: %d of %d rows had NaN or infinite logits; they end with end-of-text",
                sum(outputs[1]),
                len(tokens),
            )
        logprobs = run.logprobs
        if run.sample_items != sorted(run.sample_items):
            # Hand results back in batch.items order, which is what the scheduler walks.
            order = sorted(range(len(run.sample_items)), key=run.sample_items.__getitem__)
            tokens, logprobs = [tokens[i] for i in order], [logprobs[i] for i in order]
        return StepOutput(tokens, logprobs, run.prompt_scores)

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
            if len(inputs.sampling) < n:  # only when some row does not sample: a (B, V) copy
                logits = logits.index_select(0, inputs.sample_rows)
            return logits, []
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

    def prepare(self, batch: ScheduledBatch, previous: Launched | None = None) -> StepInputs:
        """Flatten the step: single-token rows first (decode attention), then prefill chunks.

        The single-token rows, usually all of a step, are built as arrays (positions, cache
        slots and block tables from the block-table array in one index each); only a row that
        does not sample or that scores its prompt takes the per-row path. Rows whose input is a
        placeholder take `previous`'s sampled id for their sequence, copied on the device."""
        items = batch.items
        chunk_items = [i for i, (_, n) in enumerate(items) if n > 1]
        if chunk_items:
            single_items = [i for i, (_, n) in enumerate(items) if n == 1]
            singles = [items[i][0] for i in single_items]
        else:  # a decode step: every item is one token
            single_items = list(range(len(items)))
            singles = [seq for seq, _ in items]
        bs = self.block_size
        sampling: list[SamplingInput] = []
        sample_rows: list[int] = []
        sample_items: list[int] = []
        scoring: list[PromptScoring] = []
        ns = len(singles)
        # Two flat lists, not a list of pairs: NumPy reads them 3x faster (64 rows: 11 vs 29 µs).
        host_pos = [s.num_computed for s in singles]
        pos = np.array(host_pos, np.int64)
        kv_rows = np.array([s.kv_row for s in singles], np.int64)
        ids = [s.token_ids[s.num_computed] for s in singles]
        slots = batch.block_tables[kv_rows, pos // bs] * bs + pos % bs
        singles_sample = all(
            s.num_computed + 1 == len(s.token_ids) and s.params.prompt_logprobs is None
            for s in singles
        )
        # (all_sample: the usual decode step, whose sampled rows are 0..ns-1)
        all_sample = singles_sample and not chunk_items
        if singles_sample:  # every single-token row samples and none scores, as in most steps
            sampling += singles  # (a step that also admits a prompt included: not row by row)
            sample_items += single_items
            if chunk_items:
                sample_rows += range(ns)
        else:
            for row, item in enumerate(single_items):
                self._row_outputs(batch, item, row, sampling, sample_rows, sample_items, scoring)
        chunk_ids: list[int] = []
        chunk_positions: list[int] = []
        chunk_slots: list[int] = []
        chunk_blocks: list[list[int]] = []
        for item in chunk_items:
            seq, n = items[item]
            first = ns + len(chunk_ids)
            self._row_outputs(batch, item, first, sampling, sample_rows, sample_items, scoring)
            end = seq.num_computed + n
            chunk_ids += seq.token_ids[seq.num_computed : end]
            chunk_positions += range(seq.num_computed, end)
            chunk_slots += slots_of(seq.block_table, seq.num_computed, end, bs)
            chunk_blocks.append(seq.block_table[: -(-end // bs)])  # those the chunk reads
        if chunk_items:
            ids += chunk_ids
            pos = np.concatenate([pos, np.array(chunk_positions, np.int64)])
            slots = np.concatenate([slots, np.array(chunk_slots, np.int64)])
        # Placeholders (async scheduling): only single-token rows feed a token sampled by the
        # step still in flight. (PLACEHOLDER is -1, the only negative id.)
        fill_rows: list[int] = []
        fill_from: list[int] = []
        if previous is not None and ns and min(ids[:ns]) < 0:
            row_of = previous.row_of()
            fill_rows = [row for row in range(ns) if ids[row] < 0]
            fill_from = [row_of[id(singles[row])] for row in fill_rows]
        width = max(host_pos) // bs + 1 if ns else 0
        # Every integer input of the step in one array, moved to the device at once (one
        # host-to-device copy a step on CUDA, one tensor on CPU) and split into views.
        parts = [
            np.array(ids, np.int64),
            pos,
            slots,
            np.arange(ns) if all_sample else np.array(sample_rows, np.int64),
            batch.block_tables[kv_rows, :width].ravel(),
            *(np.array(blocks, np.int64) for blocks in chunk_blocks),
        ]
        if fill_rows:
            parts += [np.array(fill_rows, np.int64), np.array(fill_from, np.int64)]
        sizes = [len(part) for part in parts]
        # split_with_sizes, not torch.split: the same views without torch.split's Python-level
        # dispatch (7 against 14 µs a step here).
        step_ints = self._tensor(np.concatenate(parts))
        (input_ids, positions, slot_mapping, sample_rows_t, tables, *blocks) = (
            step_ints.split_with_sizes(sizes)
        )
        if fill_rows:
            assert previous is not None
            *blocks, fill_t, from_t = blocks
            input_ids.index_copy_(0, fill_t, previous.chosen.index_select(0, from_t))
        attn = AttnBatch(
            slot_mapping=slot_mapping,
            num_decode=ns,
            decode=self._decode_rows(tables.view(ns, width), positions[:ns], pos[:ns])
            if ns
            else None,
            prefills=[
                PrefillChunk(items[i][0].num_computed, items[i][1], b)
                for i, b in zip(chunk_items, blocks, strict=True)
            ],
        )
        return StepInputs(
            input_ids=input_ids,
            positions=positions,
            attn=attn,
            sample_rows=sample_rows_t,
            sampling=sampling,
            sample_items=sample_items,
            scoring=scoring,
        )

    @staticmethod
    def _row_outputs(
        batch: ScheduledBatch,
        item: int,
        first_row: int,
        sampling: list[SamplingInput],
        sample_rows: list[int],
        sample_items: list[int],
        scoring: list[PromptScoring],
    ) -> None:
        """Whether item's rows (from first_row on) sample a token or score prompt tokens."""
        seq, n = batch.items[item]
        if batch.samples(seq, n):
            sample_rows.append(first_row + n - 1)
            sampling.append(seq)
            sample_items.append(item)
        if seq.params.prompt_logprobs is not None:
            # Positions [first, end) predict prompt tokens first + 1 .. end.
            first = seq.num_computed
            end = min(first + n, seq.num_prompt_tokens - 1)
            if end > first:
                targets = seq.token_ids[first + 1 : end + 1]
                scoring.append(
                    PromptScoring(item, first_row, first + 1, targets, seq.params.prompt_logprobs)
                )

    def _decode_rows(
        self, tables: torch.Tensor, positions: torch.Tensor, host_positions: np.ndarray[Any, Any]
    ) -> DecodeRows:
        """Each row's blocks up to the longest context of the step, padded with the scratch
        block (masked out by the bias)."""
        bias = None  # made on the device by the model (inside the graph on CUDA)
        if self.bias_rows is not None:
            # One index into the precomputed masks: the same values as decode_bias, at a
            # fraction of the per-op cost of building them on CPU.
            span = tables.shape[1] * self.block_size
            bias = torch.from_numpy(self.bias_rows[host_positions + 1, :span]).unsqueeze(1)
        return DecodeRows(
            block_tables=tables, positions=positions, bias=bias, buffers=self.gather_buffers
        )

    def _tensor(self, values: list[int] | np.ndarray[Any, Any]) -> torch.Tensor:
        return to_device(values, torch.long, self.device)
