"""GPT-2, written as the math, with the checkpoint's own parameter names (wte, wpe, h.N.*, ln_f).

The forward pass takes a flat batch of tokens from many sequences at different positions and
reads/writes a KV cache; see attention.py for how rows map onto sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.model.attention import AttnBatch, KVCache, attend, with_decode_bias
from app.model.int8 import Int8Weight, int8_linear, quantize_weight
from app.model.matmul import (
    Conv1D,
    GemmBackend,
    numpy_mm,
    onednn_linear,
    pack_linear_weight,
)


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int = 50256

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        """Read a Hugging Face config.json of the GPT-2 architecture."""
        model_type = hf.get("model_type")
        if model_type != "gpt2":
            raise ValueError(f"expected a GPT-2 checkpoint (model_type 'gpt2'), got {model_type!r}")
        activation = hf.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation_function {activation!r}; GPT-2 uses gelu_new")
        eos = hf.get("eos_token_id", 50256)
        return cls(
            vocab_size=hf["vocab_size"],
            n_positions=hf["n_positions"],
            n_embd=hf["n_embd"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            eos_token_id=eos if isinstance(eos, int) else 50256,
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)

    def forward(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, batch: AttnBatch
    ) -> torch.Tensor:
        n, c = x.shape
        q, k, v = self.c_attn(x).view(n, 3, self.n_head, c // self.n_head).unbind(1)  # (N, H, D)
        y = attend(q, k, v, cache_k, cache_v, batch)
        return self.c_proj(y.reshape(n, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd, activation="gelu_tanh")
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.c_fc(x))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, batch: AttnBatch
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache_k, cache_v, batch)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 language model; the output projection is tied to wte."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.requires_grad_(False)
        self._lm_head_packed: torch.Tensor | None = None  # oneDNN layout of wte, when enabled
        self._lm_head_int8: Int8Weight | None = None  # quantized wte, when quantization=int8

    def set_gemm_backend(self, backend: GemmBackend, batch_hint: int = 32) -> GemmBackend:
        """Switch every GEMM to `backend`; returns the backend actually in use."""
        layers = [m for m in self.modules() if isinstance(m, Conv1D)]
        self._lm_head_int8 = None
        for m in layers:
            m._int8 = None
        if backend == "int8":  # raises Int8Unavailable rather than fall back: it was asked for
            for m in layers:
                m.use_int8()
            self._lm_head_packed = None
            self._lm_head_int8 = quantize_weight(self.wte.weight)
            return "int8"
        if backend == "onednn":
            self._lm_head_packed = pack_linear_weight(self.wte.weight, batch_hint)
            if self._lm_head_packed is not None and all(m.use_onednn(batch_hint) for m in layers):
                return "onednn"
        for m in layers:
            m._packed = None
        self._lm_head_packed = None
        return "torch"

    def forward(
        self,
        input_ids: torch.Tensor,  # (N,)
        positions: torch.Tensor,  # (N,)
        batch: AttnBatch,
        kv: KVCache,
    ) -> torch.Tensor:
        """Hidden states after the last block, (N, C), before ln_f."""
        batch = with_decode_bias(batch, kv.block_size, kv.k.dtype)
        x = self.wte(input_ids) + self.wpe(positions)
        for i, block in enumerate(self.h):
            x = block(x, kv.k[i], kv.v[i], batch)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(M, C) hidden states -> (M, V) logits."""
        x = self.ln_f(hidden)
        if self._lm_head_int8 is not None:
            return int8_linear(x, self._lm_head_int8, None)
        if self._lm_head_packed is not None:
            if x.shape[0] == 1:  # matrix-vector: see matmul.py on why numpy
                return numpy_mm(self.wte.weight, x.view(-1, 1)).view(1, -1)
            return onednn_linear(x, self._lm_head_packed, None, "none")
        return F.linear(x, self.wte.weight)
