"""Issue 16 at the HTTP layer, over the fake engine: what a client sees when things go wrong."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient


def test_models_shows_the_served_name_and_model_refuses_the_path(fake: FakeEngineClient) -> None:
    settings = Settings(model="/srv/models/fake-gpt2")
    with TestClient(create_app(settings, fake)) as client:
        [card] = client.get("/v1/models").json()["data"]
        assert card["id"] == card["root"] == "fake-gpt2"
        r = client.post("/v1/completions", json={"model": "/srv/models/fake-gpt2", "prompt": "a"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/completions", json={"model": "fake-gpt2", "prompt": "a"})
        assert r.status_code == 200


def test_openapi_states_the_cross_field_rules(client: TestClient) -> None:
    """Both rules answer 422; the schema says so, in words and machine-readably."""
    schemas: dict[str, Any] = client.get("/openapi.json").json()["components"]["schemas"]
    top = schemas["ChatCompletionRequest"]["properties"]["top_logprobs"]
    assert top["x-requires"] == {"logprobs": True}
    assert "logprobs=true" in top["description"] and "422" in top["description"]
    prompt = schemas["CompletionRequest"]["properties"]["prompt_logprobs"]
    assert prompt["x-not-with"] == {"stream": True}
    assert "stream=true" in prompt["description"] and "422" in prompt["description"]
