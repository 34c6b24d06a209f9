"""The startup log and /v1/models say which model is served, and from where."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_startup_log_and_models_name_the_served_model(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(model=str(tiny_model_dir), device="cpu", served_model_name="tiny")
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        [card] = client.get("/v1/models").json()["data"]
    assert (card["id"], card["root"]) == ("tiny", "tiny")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving model")]
    assert "'tiny'" in line and str(tiny_model_dir) in line and "float32 on cpu" in line
