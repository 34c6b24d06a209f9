"""What is checked before the model loads (app/preflight.py, app/hub.py) and how a failed start
reads (app/startup_errors.py). tests/e2e/test_startup_errors.py runs the same cases through the
real CLI."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import BUNDLED_MODEL, Settings
from app.hub import ModelNotFoundError, check_checkpoint, looks_like_path, resolve_model_dir
from app.preflight import bind_listener, check_model
from app.startup_errors import ExitStatus, StartupError, describe


def test_a_taken_port_is_an_address_error_naming_the_flag_and_the_variable() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(StartupError) as error:
            bind_listener("127.0.0.1", port)
    assert error.value.status == ExitStatus.ADDRESS
    assert f"port {port} is already in use" in str(error.value)
    assert "--port" in str(error.value) and "GPT2_PORT" in str(error.value)


def test_the_port_is_held_from_the_check_on() -> None:
    """Listening, not only bound: a second server (SO_REUSEADDR too) cannot share the port
    and find out only after loading its model."""
    sock = bind_listener("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with pytest.raises(StartupError, match="already in use"):
            bind_listener("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("/models/gpt2", True),
        ("./gpt2", True),
        ("~/gpt2", True),
        ("models/a/b", True),
        ("gpt2", False),
        ("openai-community/gpt2", False),
    ],
)
def test_what_counts_as_a_path(name: str, is_path: bool) -> None:
    assert looks_like_path(name) is is_path


def test_a_missing_path_is_never_sent_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(**_: object) -> None:
        raise AssertionError("a path went to the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_hub)
    for name in ("/models/does-not-exist", "./nope", "a/b/c"):
        with pytest.raises(ModelNotFoundError, match="does not exist") as error:
            resolve_model_dir(name)
        assert "download" not in str(error.value)


def test_a_hub_id_offline_advises_hf_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(StartupError) as error:
        check_model("openai-community/gpt2")
    assert error.value.status == ExitStatus.MODEL
    text = str(error.value)
    assert "hf download openai-community/gpt2 --local-dir ./gpt2" in text
    assert "huggingface-cli" not in text


def test_check_checkpoint_names_each_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        check_checkpoint(tmp_path)
    text = str(error.value)
    assert "no config.json; no model.safetensors or pytorch_model.bin; no tokenizer.json" in text
    check_checkpoint(BUNDLED_MODEL)  # vocab.json + merges.txt will do

    other = tmp_path / "llama"
    shutil.copytree(BUNDLED_MODEL, other)
    (other / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelNotFoundError, match="'llama' checkpoint"):
        check_checkpoint(other)


def test_an_empty_model_variable_is_unset_and_an_empty_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPT2_MODEL", "")
    assert Settings().model == str(BUNDLED_MODEL)
    with pytest.raises(ValidationError) as error:
        Settings(model=" ")
    line = str(describe(error.value))
    assert line.startswith("invalid setting: --model / GPT2_MODEL: must not be empty")
    assert describe(error.value).status == ExitStatus.CONFIG


def test_invalid_settings_read_as_flag_variable_limit_and_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPT2_PORT", "70000")
    with pytest.raises(ValidationError) as error:
        Settings()
    assert str(describe(error.value)) == (
        "invalid setting: --port / GPT2_PORT: Input should be less than or equal to 65535 "
        "(got '70000')"
    )


def test_anything_else_is_one_line_pointing_at_debug() -> None:
    error = describe(RuntimeError("engine worker failed to start: ValueError: bad\nweights"))
    assert error.status == ExitStatus.FAILED
    assert "\n" not in str(error) and "--log-level DEBUG" in str(error)
