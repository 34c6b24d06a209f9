from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient


def make_client(fake: FakeEngineClient, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(model="fake-gpt2", **settings), fake))  # type: ignore[arg-type]


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    r = client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    replaced = client.get("/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32


def test_request_id_on_errors_and_streams(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"n": 99}, headers={"X-Request-Id": "r1"})
    assert (r.status_code, r.headers["x-request-id"]) == (400, "r1")
    r = client.post("/v1/completions", json={"stream": True}, headers={"X-Request-Id": "r2"})
    assert r.headers["x-request-id"] == "r2"


def test_api_key(fake: FakeEngineClient, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated monthly\nsecond-key\n\nthird-key\n")
    with make_client(fake, api_key="first-key", api_key_file=key_file) as client:
        r = client.get("/v1/models")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/models", headers=_bearer("wrong")).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "first-key"}).status_code == 401
        for key in ("first-key", "second-key", "third-key"):
            assert client.get("/v1/models", headers=_bearer(key)).status_code == 200
        assert client.get("/v1/models", headers=_bearer("# rotated monthly")).status_code == 401
        # Probes and metrics stay open for the orchestrator and the scraper.
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code != 401
        assert client.post("/generate", json={"inputs": "x"}).status_code == 401


def test_no_key_configured_means_no_auth(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200


def test_body_limit_by_content_length(fake: FakeEngineClient) -> None:
    with make_client(fake, max_request_body_bytes=100) as client:
        r = client.post("/v1/completions", json={"prompt": "x" * 200})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == 413
        assert "100 bytes" in r.json()["error"]["message"]
        assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200
        assert not fake.calls[1:]


def test_body_limit_for_chunked_bodies(fake: FakeEngineClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    with make_client(fake, max_request_body_bytes=100) as client:
        r = client.post(
            "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["param"] == "body"
    assert fake.calls == []


def test_cors_off_by_default(client: TestClient) -> None:
    r = client.get("/health", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_configured(fake: FakeEngineClient) -> None:
    with make_client(fake, cors_allow_origins=["https://app.example.com"], api_key="k") as client:
        preflight = client.options(
            "/v1/completions",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200  # no key needed for a preflight
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        r = client.get("/health", headers={"Origin": "https://app.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = client.get("/health", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
