"""GET /v1/engine/stats over the fake engine (the real engine's view: test_real_engine.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.engine_view import use_engine_view
from tests.api.fakes import FakeEngineClient


def test_stats_returns_the_engine_view(
    client: TestClient, fake: FakeEngineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = use_engine_view(fake, monkeypatch)
    r = client.get("/v1/engine/stats")
    assert r.status_code == 200
    # The engine's view, then the KV cache's use as a fraction and the step times in ms.
    assert r.json() == {**view, "kv_cache_usage": 0.5, "recent_step_ms": [4.0, 12.5, 6.0]}


def test_stats_before_the_first_step(
    client: TestClient, fake: FakeEngineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = use_engine_view(fake, monkeypatch, stepped=False)
    r = client.get("/v1/engine/stats")
    assert r.status_code == 200
    assert r.json() == {**view, "recent_step_ms": []}  # no kv_cache_usage without a total
    assert r.json()["last_batch"] is None and r.json()["kv_blocks_total"] is None


def test_stats_is_documented_and_503_before_the_engine(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/engine/stats" in schema["paths"]
    assert "/metrics" not in schema["paths"]
    app = create_app(Settings(model="fake-gpt2"))
    r = TestClient(app).get("/v1/engine/stats")  # lifespan not run: no engine yet
    assert r.status_code == 503
    assert TestClient(app).get("/metrics").status_code == 200  # metrics do not need it
