from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.fakes import FakeEngineClient

ROOT = Path(__file__).resolve().parents[2]


def test_health_is_liveness_only(client: TestClient, fake: FakeEngineClient) -> None:
    fake.ready = False
    r = client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_ready_follows_the_engine(client: TestClient, fake: FakeEngineClient) -> None:
    assert client.get("/ready").json() == {"status": "ready"}
    fake.ready = False
    r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 503
    assert "starting" in r.json()["error"]["message"]
    fake.ready = True
    fake.begin_drain(5.0)
    r = client.get("/ready")
    assert r.status_code == 503
    assert "draining" in r.json()["error"]["message"]


def test_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "fake-gpt2"
    assert card["object"] == "model"
    assert card["owned_by"] == "gpt2-serve"
    assert card["root"] == "fake-gpt2"
    assert card["max_model_len"] == 128
    assert isinstance(card["created"], int)


def test_tokenize_and_detokenize(client: TestClient) -> None:
    r = client.post("/tokenize", json={"prompt": "Hé"})
    assert r.json() == {"tokens": [72, 195, 169], "count": 3, "max_model_len": 128}
    assert client.post("/tokenize", json={"prompt": ""}).json()["tokens"] == []
    r = client.post("/detokenize", json={"tokens": [72, 195, 169, 256]})
    assert r.json() == {"prompt": "Hé<|endoftext|>"}
    assert client.post("/tokenize", json={"prompt": 5}).status_code == 400


def test_openapi_documents_event_streams(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/generate_stream", "/"):
        content = spec["paths"][path]["post"]["responses"]["200"]["content"]
        assert "text/event-stream" in content, path
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert "application/json" in completions["200"]["content"]
    assert {"400", "401", "413", "429", "503"} <= set(completions)
    generate = spec["paths"]["/generate"]["post"]["responses"]
    assert {"401", "413", "422", "429", "503"} <= set(generate)


def test_openapi_knows_the_largest_token_id(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] == 256
    stop_ids = schemas["CompletionRequest"]["properties"]["stop_token_ids"]["anyOf"][0]
    assert stop_ids["items"]["maximum"] == 256


def test_importing_the_app_leaves_torch_out() -> None:
    code = (
        "import sys, app.main, app.config, app.api.routes.generate;"
        "bad = [m for m in ('torch', 'transformers', 'app.model') if m in sys.modules];"
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
