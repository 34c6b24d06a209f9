from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import app.main
from app.config import BUNDLED_MODEL, Settings, derive_model_name, to_engine_config
from app.engine.config import EngineConfig
from tests.api.fakes import FakeEngineClient


def test_defaults() -> None:
    s = Settings()
    assert (s.model, s.host, s.port, s.device, s.dtype) == (
        str(BUNDLED_MODEL),
        "0.0.0.0",
        8000,
        "auto",
        "auto",
    )
    assert s.model_name == "gpt2-demo"
    assert Settings(model="gpt2-demo").model == str(BUNDLED_MODEL)
    assert (BUNDLED_MODEL / "config.json").is_file()
    assert (s.max_num_seqs, s.max_model_len, s.max_num_batched_tokens) == (256, None, 512)
    assert (s.max_queued_requests, s.max_queued_tokens) == (256, 262144)
    assert (s.api_key, s.api_key_file, s.served_model_name) == (None, None, None)
    assert s.cors_allow_origins == []
    assert s.max_request_body_bytes == 1024 * 1024
    assert (s.log_prompts, s.drain_timeout_seconds, s.keep_alive_seconds) == (False, 30.0, 15.0)
    assert s.api_keys() == []


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_MAX_NUM_SEQS", "64")
    monkeypatch.setenv("GPT2_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("GPT2_LOG_PROMPTS", "true")
    s = Settings()
    assert s.max_num_seqs == 64
    assert s.cors_allow_origins == ["https://a.example", "https://b.example"]
    assert s.log_prompts is True
    monkeypatch.setenv("GPT2_CORS_ALLOW_ORIGINS", '["https://c.example"]')
    assert Settings().cors_allow_origins == ["https://c.example"]
    monkeypatch.setenv("GPT2_MAX_NUM_SEQS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_model_name(tmp_path: Path) -> None:
    assert derive_model_name("openai-community/gpt2") == "openai-community/gpt2"
    checkpoint = tmp_path / "gpt2-medium"
    checkpoint.mkdir()
    assert derive_model_name(str(checkpoint) + "/") == "gpt2-medium"
    assert Settings(model=str(checkpoint)).model_name == "gpt2-medium"
    assert Settings(model=str(checkpoint), served_model_name="prod").model_name == "prod"


def test_chat_template_is_checked_at_start() -> None:
    with pytest.raises(ValidationError, match="placeholders"):
        Settings(chat_template="{name}: {content}")


def test_to_engine_config() -> None:
    s = Settings(
        model="distilgpt2",
        device="cpu",
        dtype="float32",
        max_num_seqs=8,
        max_model_len=256,
        max_num_batched_tokens=64,
        quantization="int8",
    )
    config = to_engine_config(s)
    assert config.quantization == "int8"
    assert (config.model, config.device, config.dtype) == ("distilgpt2", "cpu", "float32")
    assert (config.max_num_seqs, config.max_model_len, config.max_num_batched_tokens) == (
        8,
        256,
        64,
    )


def test_quantization_flag_and_its_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from app.cli import _add_settings_flags, _settings_from

    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    assert _settings_from(parser.parse_args(["--quantization", "int8"])).quantization == "int8"
    assert Settings().quantization == "none"
    monkeypatch.setenv("GPT2_QUANTIZATION", "int4")
    with pytest.raises(ValidationError, match="quantization"):
        Settings()


def test_lifespan_owns_the_engine_it_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    built: dict[str, object] = {}
    fake = FakeEngineClient()

    def factory(config: object, **kwargs: object) -> FakeEngineClient:
        built.update(config=config, **kwargs)
        return fake

    monkeypatch.setattr(app.main, "AsyncEngine", factory)
    settings = Settings(model="fake-gpt2", max_queued_requests=7, drain_timeout_seconds=4.0)
    with TestClient(app.main.create_app(settings)) as client:
        assert fake.started
        assert client.get("/ready").status_code == 200
    assert built["model_id"] == "fake-gpt2"
    assert built["max_queued_requests"] == 7
    assert built["max_queued_tokens"] == 262144
    assert fake.shutdown_grace == 4.0


def test_an_engine_passed_in_belongs_to_the_caller(fake: FakeEngineClient) -> None:
    with TestClient(app.main.create_app(Settings(model="fake-gpt2"), fake)):
        pass
    assert not fake.started
    assert fake.shutdown_grace is None


# --- engine options: declared once, in EngineConfig ------------------------------------------
# These iterate over dataclasses.fields(EngineConfig), so a field added there is covered here.


def _env_sample(name: str, hint: Any, default: Any, bound: int | None) -> tuple[str, Any]:
    """A valid value other than the default for an engine field: (text for GPT2_<NAME>, value)."""
    if get_origin(hint) is Literal:
        choice = next(c for c in get_args(hint) if c != default)
        return choice, choice
    if get_origin(hint) is tuple:
        return "3, 5", (3, 5)
    kinds = [a for a in get_args(hint) if a is not type(None)] or [hint]
    if kinds[0] is bool:
        return str(not default).lower(), not default
    if kinds[0] is int:
        value = (bound or 0) + 300  # >= max_num_seqs (256), <= max_num_batched_tokens (512)
        return str(value), value
    if kinds[0] is float:
        return "0.5", 0.5
    assert kinds[0] is str, f"no sample value for EngineConfig.{name}: {hint}"
    return f"{name}-from-env", f"{name}-from-env"


def _engine_fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = get_type_hints(EngineConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(EngineConfig)]


def test_every_engine_field_is_a_setting() -> None:
    for f, _ in _engine_fields():
        assert f.name in Settings.model_fields, f.name
        description = Settings.model_fields[f.name].description or ""
        assert description.startswith(f.metadata["help"]), f.name
    defaults = Settings(model="x").engine_config()
    for f, _ in _engine_fields():
        if f.default is not dataclasses.MISSING:
            assert getattr(defaults, f.name) == f.default, f.name


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_every_engine_field_is_a_flag_with_help(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import main

    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: nothing wrapped
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f, hint in _engine_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag + " " in text, flag
        assert f.metadata["help"] in text, flag
        assert f"(env GPT2_{f.name.upper()}; default: " in text, flag
        if get_origin(hint) is Literal:
            assert f"{flag} {{{','.join(get_args(hint))}}}" in text, flag


def test_every_engine_field_comes_from_its_flag_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from app.cli import _add_settings_flags, _settings_from

    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    for f, hint in _engine_fields():
        text, value = _env_sample(f.name, hint, f.default, f.metadata.get("ge"))
        monkeypatch.setenv(f"GPT2_{f.name.upper()}", text)
        assert getattr(Settings().engine_config(), f.name) == value, f.name
        monkeypatch.delenv(f"GPT2_{f.name.upper()}")
        flag = "--" + f.name.replace("_", "-")
        argv = [flag] if value is True else ["--no-" + flag[2:]] if value is False else [flag, text]
        config = _settings_from(parser.parse_args(argv)).engine_config()
        assert getattr(config, f.name) == value, flag


def test_cpu_gemm_and_cuda_graph_batch_sizes_reach_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from app.cli import _add_settings_flags, _settings_from

    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    args = parser.parse_args(["--cpu-gemm", "torch", "--cuda-graph-batch-sizes", "1,2"])
    config = to_engine_config(_settings_from(args))
    assert (config.cpu_gemm, config.cuda_graph_batch_sizes) == ("torch", (1, 2))
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpu-gemm", "mkl"])

    monkeypatch.setenv("GPT2_CPU_GEMM", "onednn")
    monkeypatch.setenv("GPT2_CUDA_GRAPH_BATCH_SIZES", "1,2,4")
    config = to_engine_config(Settings())
    assert (config.cpu_gemm, config.cuda_graph_batch_sizes) == ("onednn", (1, 2, 4))
    monkeypatch.setenv("GPT2_CUDA_GRAPH_BATCH_SIZES", "[8, 16]")
    assert to_engine_config(Settings()).cuda_graph_batch_sizes == (8, 16)
    monkeypatch.setenv("GPT2_CPU_GEMM", "mkl")
    with pytest.raises(ValidationError, match="cpu_gemm"):
        Settings()


def test_out_of_bounds_engine_values_fail_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_MAX_NUM_SEQS", "0")
    with pytest.raises(ValidationError, match="max_num_seqs"):
        Settings()
    monkeypatch.delenv("GPT2_MAX_NUM_SEQS")
    bounded = [(f.name, f.metadata["ge"]) for f, _ in _engine_fields() if "ge" in f.metadata]
    assert ("max_num_seqs", 1) in bounded
    for name, bound in bounded:  # the same bounds in Settings and in EngineConfig
        monkeypatch.setenv(f"GPT2_{name.upper()}", str(bound - 1))
        with pytest.raises(ValidationError, match=name):
            Settings()
        monkeypatch.delenv(f"GPT2_{name.upper()}")
        with pytest.raises(ValueError, match=name):
            EngineConfig(model="x", **{name: bound - 1})
    # EngineConfig's cross-field rule, at start-up rather than when the engine starts
    monkeypatch.setenv("GPT2_MAX_NUM_BATCHED_TOKENS", "8")
    with pytest.raises(ValidationError, match="max_num_batched_tokens"):
        Settings()
    monkeypatch.setenv("GPT2_MAX_NUM_BATCHED_TOKENS", "512")
    monkeypatch.setenv("GPT2_CUDA_GRAPH_BATCH_SIZES", "0,4")
    with pytest.raises(ValidationError, match="cuda_graph_batch_sizes"):
        Settings()
