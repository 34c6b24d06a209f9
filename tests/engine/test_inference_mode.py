"""The worker's step runs under torch.inference_mode(), entered once for its loop rather than at
every step (app/engine/worker/device.py's `inference`)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.autograd.grad_mode import inference_mode

from app.engine import SamplingParams
from app.engine.worker.device import inference


@inference
def _seen() -> bool:
    return torch.is_inference_mode_enabled()


def _count_entries(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every time any inference_mode (a `with`, a decorator's) is entered from now on."""
    entered: list[bool] = []
    real = inference_mode.__enter__

    def counting(self: Any) -> None:
        entered.append(True)
        real(self)

    monkeypatch.setattr(inference_mode, "__enter__", counting)
    return entered


def test_inference_turns_the_mode_on_when_it_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    entered = _count_entries(monkeypatch)
    assert not torch.is_inference_mode_enabled()
    assert _seen()
    assert not torch.is_inference_mode_enabled()  # and off again after
    assert entered == [True]


def test_a_step_inside_the_loop_mode_enters_it_no_more(
    make_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the worker's loop runs it (main.py): inside one inference_mode, a step (the model
    runner's launch, the static decode path) enters no other."""
    llm = make_llm(max_num_seqs=2)
    llm.submit([1, 2, 3], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    with torch.inference_mode():
        entered = _count_entries(monkeypatch)
        assert _seen()
        while llm.core.has_unfinished():
            llm.step()
    assert entered == []
