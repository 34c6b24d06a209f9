"""Checkpoint loading: both file formats, both naming styles, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.model.weights import ModelNotFoundError, load_gpt2, resolve_model_dir
from tests.checkpoints import make_checkpoint


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pytorch_bin_and_safetensors_load_the_same(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "st", seed=5)
    make_checkpoint(tmp_path / "bin", seed=5, safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    cpu = torch.device("cpu")
    a = load_gpt2(tmp_path / "st", torch.float32, cpu)
    b = load_gpt2(tmp_path / "bin", torch.float32, cpu)
    assert _same_weights(a, b)


def test_original_gpt2_names_without_prefix_load(tmp_path: Path) -> None:
    """The hub's openai-community/gpt2 stores 'h.0.attn...' with no 'transformer.' prefix."""
    make_checkpoint(tmp_path / "hf", seed=6)
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 4, 4)  # old checkpoints carry the causal mask
    (tmp_path / "bare").mkdir()
    save_file(bare, str(tmp_path / "bare" / "model.safetensors"))
    (tmp_path / "bare" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    cpu = torch.device("cpu")
    assert _same_weights(
        load_gpt2(tmp_path / "hf", torch.float32, cpu),
        load_gpt2(tmp_path / "bare", torch.float32, cpu),
    )


def test_unknown_hub_id_offline_says_how_to_use_a_directory() -> None:
    with pytest.raises(ModelNotFoundError, match=r"`hf download .* and pass --model \./gpt2-n"):
        resolve_model_dir("openai-community/gpt2-not-cached-here")


def test_non_gpt2_checkpoint_is_refused(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, seed=7)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type"):
        load_gpt2(tmp_path, torch.float32, torch.device("cpu"))


def test_missing_weights_are_reported(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, seed=8)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['h.1.mlp.c_fc.weight'\]"):
        load_gpt2(tmp_path, torch.float32, torch.device("cpu"))
