"""A start that cannot go on, as a user meets it: the real `gpt2-serve` process, its exit status
(docs/operations.md), and one line on stderr that says what is wrong and what to do, with no
traceback unless --log-level DEBUG asks for it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.startup_errors import ExitStatus

# Long enough for the worker's torch import on a slow machine; the failures come well before.
TIMEOUT = 180


def run_cli(*args: str, **env: str) -> tuple[int, list[str]]:
    """Run `gpt2-serve ARGS`; its exit status and the messages of its output lines."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines


def message(line: str) -> str:
    return str(json.loads(line)["message"]) if line.startswith("{") else line


def the_one_line(lines: list[str]) -> str:
    """The output is a single line (no traceback, no other log): its message."""
    assert len(lines) == 1, "\n".join(lines)
    return message(lines[0])


def the_error(lines: list[str]) -> str:
    """Exactly one line at ERROR (INFO lines of the start may come before it), no traceback."""
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    errors = [line for line in lines if '"level": "ERROR"' in line or " ERROR " in line]
    assert len(errors) == 1, "\n".join(lines)
    return message(errors[0])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_a_missing_directory_is_named_as_a_path(tmp_path: Path) -> None:
    code, lines = run_cli("--model", "/models/does-not-exist")
    assert code == ExitStatus.MODEL
    line = the_one_line(lines)
    assert "/models/does-not-exist does not exist" in line
    assert "--model" in line and "GPT2_MODEL" in line
    assert "download" not in line  # a path is not a hub id


def test_a_hub_id_offline_gets_the_hf_download_advice(tmp_path: Path) -> None:
    code, lines = run_cli("--model", "gpt2", HF_HOME=str(tmp_path / "hf"))
    assert code == ExitStatus.MODEL
    line = the_one_line(lines)
    assert "`hf download gpt2 --local-dir ./gpt2`" in line and "--model ./gpt2" in line
    assert "huggingface-cli" not in line  # huggingface_hub 2.x ships `hf` only


def test_a_directory_that_is_not_a_checkpoint_names_what_is_missing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    code, lines = run_cli("--model", str(tmp_path))
    assert code == ExitStatus.MODEL
    line = the_one_line(lines)
    assert "is not a GPT-2 checkpoint" in line
    for missing in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json"):
        assert missing in line, missing

    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, weights_only / name)
    code, lines = run_cli("--model", str(weights_only))
    assert code == ExitStatus.MODEL
    line = the_one_line(lines)
    assert "no tokenizer.json or vocab.json + merges.txt" in line
    assert "config.json;" not in line and "no model.safetensors" not in line


def test_an_empty_model_flag_is_refused() -> None:
    code, lines = run_cli("--model", "")
    assert code == ExitStatus.CONFIG
    line = the_one_line(lines)
    assert "--model / GPT2_MODEL: must not be empty" in line and "bundled demo model" in line


def test_an_empty_model_variable_serves_the_bundled_model() -> None:
    """GPT2_MODEL= (as compose files pass it when nothing is set) counts as unset: the bundled
    demo model (it used to be the current directory, which is no checkpoint)."""
    code, lines = run_cli(
        "generate", "The king", "--max-tokens", "2", "--device", "cpu", GPT2_MODEL=""
    )
    assert code == 0, "\n".join(lines)
    assert any("loaded GPT-2" in line and "gpt2-demo" in line for line in lines), lines


def test_an_invalid_value_names_the_flag_the_variable_and_the_limit() -> None:
    code, lines = run_cli("--max-num-seqs", "0")
    assert code == ExitStatus.CONFIG
    line = the_one_line(lines)
    assert "--max-num-seqs / GPT2_MAX_NUM_SEQS" in line and "greater than or equal to 1" in line


@pytest.mark.parametrize("api_workers", ["1", "2"])
def test_a_taken_port_fails_before_the_model_loads(
    api_workers: str, taken_port: int, tiny_model_dir: Path
) -> None:
    code, lines = run_cli(
        "--model", str(tiny_model_dir), "--device", "cpu", "--host", "127.0.0.1",
        "--port", str(taken_port), "--api-workers", api_workers, GPT2_LOG_LEVEL="INFO",
    )  # fmt: skip
    assert code == ExitStatus.ADDRESS
    # At INFO, nothing else was logged: no engine started, no worker spawned, nothing drained.
    line = the_one_line(lines)
    assert f"port {taken_port} is already in use" in line
    assert "--port" in line and "GPT2_PORT" in line


def test_the_traceback_is_there_at_debug_level() -> None:
    code, lines = run_cli("--model", "/models/does-not-exist", "--log-level", "DEBUG")
    assert code == ExitStatus.MODEL
    assert any("Traceback" in line for line in lines)


@pytest.mark.parametrize("api_workers", ["1", "2"])
def test_a_worker_that_cannot_load_the_checkpoint_ends_the_start_in_one_line(
    api_workers: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Every file is there (the checks before loading pass), but the weights lack a layer.
    broken = tmp_path / "one-layer-short"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["n_layer"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    code, lines = run_cli(
        "--model", str(broken), "--device", "cpu", "--host", "127.0.0.1", "--port", port,
        "--api-workers", api_workers,
    )  # fmt: skip
    assert code == ExitStatus.FAILED
    line = the_error(lines)
    assert "engine worker failed to start" in line and "does not match GPT-2" in line
    assert "--log-level DEBUG" in line
    assert not any("draining" in message(other) for other in lines)
