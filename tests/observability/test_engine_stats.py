"""GET /v1/engine/stats over the fake engine (the real engine's view: test_real_engine.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_stats_returns_the_engine_view(client: TestClient) -> None:
    r = client.get("/v1/engine/stats")
    assert r.status_code == 200
    assert r.json() == {"running": 0, "waiting": 0, "calls": 0}  # the fake's stats()


def test_stats_is_documented_and_503_before_the_engine(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/engine/stats" in schema["paths"]
    assert "/metrics" not in schema["paths"]
    app = create_app(Settings(model="fake-gpt2"))
    r = TestClient(app).get("/v1/engine/stats")  # lifespan not run: no engine yet
    assert r.status_code == 503
    assert TestClient(app).get("/metrics").status_code == 200  # metrics do not need it
