"""One log line per finished generation request: JSON by default, text when asked, the prompt
only when log_prompts is on."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.request_log import REQUEST_LOGGER, JsonFormatter, TextFormatter, configure_logging
from tests.observability.conftest import RecordingFake


class Lines:
    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    def all(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line]

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.all()]


def _capture(formatter: logging.Formatter) -> Iterator[Lines]:
    lines = Lines(formatter)
    logger = logging.getLogger(REQUEST_LOGGER)
    old_level = logger.level
    logger.addHandler(lines.handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines.handler)
        logger.setLevel(old_level)


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    yield from _capture(JsonFormatter())


@pytest.fixture
def text_lines() -> Iterator[Lines]:
    yield from _capture(TextFormatter())


def test_one_json_line_per_finished_request(client: TestClient, json_lines: Lines) -> None:
    r = client.post(
        "/v1/completions",
        json={"prompt": "Hi there", "max_tokens": 4},
        headers={"X-Request-Id": "abc-123"},
    )
    assert r.status_code == 200
    [line] = json_lines.json()
    assert line["message"] == "request finished"
    assert line["logger"] == REQUEST_LOGGER and line["level"] == "INFO"
    assert line["request_id"] == "abc-123" == r.headers["X-Request-Id"]
    assert line["status"] == 200
    assert line["outcome"] == "success"
    assert line["finish_reason"] == "length"
    assert line["path"] == "/v1/completions" and line["method"] == "POST"
    assert line["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert line["completion_tokens"] == r.json()["usage"]["completion_tokens"] == 4
    for key in ("queue_ms", "ttft_ms", "total_ms"):
        assert isinstance(line[key], float) and line[key] >= 0, key
    assert line["ttft_ms"] <= line["total_ms"]
    assert "prompt" not in line and "Hi there" not in json.dumps(line)
    assert "trace_id" not in line  # tracing is off


def test_failures_and_streams_get_their_line(
    client: TestClient, fake: RecordingFake, json_lines: Lines
) -> None:
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": "x"})
    fake.overloaded = True
    client.post("/generate", json={"inputs": "Hi"})
    fake.overloaded = False
    client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 30}})
    client.get("/v1/models")  # not a generation request: no line
    lines = json_lines.json()
    assert [(x["status"], x["outcome"]) for x in lines] == [
        (400, "validation"),
        (429, "overloaded"),
        (200, "success"),
    ]
    assert lines[1]["completion_tokens"] == 0 and lines[1]["ttft_ms"] is None
    assert lines[2]["finish_reason"] == "stop" and lines[2]["completion_tokens"] == 21


def test_prompt_only_when_enabled(fake: RecordingFake, json_lines: Lines) -> None:
    settings = Settings(model="fake-gpt2", log_prompts=True)
    with TestClient(create_app(settings, fake)) as client:
        client.post("/v1/completions", json={"prompt": "Hi there", "max_tokens": 2})
    [line] = json_lines.json()
    assert line["prompt"] == "Hi there"


def test_text_format_for_humans(client: TestClient, text_lines: Lines) -> None:
    client.post(
        "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers={"X-Request-Id": "r-1"}
    )
    [line] = text_lines.all()
    assert " INFO gpt2_serve.requests: request finished " in line
    for part in ("request_id=r-1", "status=200", "finish_reason=length", "completion_tokens=2"):
        assert part in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configure_logging_switches_the_root_format(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO")
        logging.getLogger("uvicorn.error").info("started %s", "server")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(err)["message"] == "started server"
        configure_logging("text", "WARNING")
        logging.getLogger("x").info("hidden")
        logging.getLogger("x").warning("shown")
        err = capsys.readouterr().err
        assert "hidden" not in err and "WARNING x: shown" in err
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_log_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(model="x").log_format == "json"
    monkeypatch.setenv("GPT2_LOG_FORMAT", "text")
    monkeypatch.setenv("GPT2_LOG_LEVEL", "debug")
    s = Settings(model="x")
    assert (s.log_format, s.log_level) == ("text", "DEBUG")
    monkeypatch.setenv("GPT2_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings(model="x")


def test_uvicorn_colour_codes_stay_out_of_json() -> None:
    record = logging.makeLogRecord(
        {"msg": "Started", "name": "uvicorn.error", "color_message": "\x1b[36mStarted\x1b[0m"}
    )
    line = json.loads(JsonFormatter().format(record))
    assert "color_message" not in line and line["message"] == "Started"


def test_cli_flags_reach_the_observability_settings() -> None:
    import argparse

    from app.cli import _add_settings_flags, _settings_from

    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    args = parser.parse_args(
        ["--log-format", "text", "--log-level", "warning", "--latency-buckets", "0.001,0.1,10"]
    )
    s = _settings_from(args)
    assert (s.log_format, s.log_level, s.latency_buckets) == ("text", "WARNING", [0.001, 0.1, 10])
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-format", "yaml"])
