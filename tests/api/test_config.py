from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import app.main
from app.config import BUNDLED_MODEL, Settings, derive_model_name, to_engine_config
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
    assert (s.max_num_seqs, s.max_model_len, s.max_num_batched_tokens) == (32, None, 512)
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
