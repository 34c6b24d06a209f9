from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient


@pytest.fixture
def fake() -> FakeEngineClient:
    return FakeEngineClient()


@pytest.fixture
def settings() -> Settings:
    return Settings(model="fake-gpt2", keep_alive_seconds=5.0)


@pytest.fixture
def client(fake: FakeEngineClient, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, fake)) as test_client:
        yield test_client


def sse_events(text: str) -> list[Any]:
    """Parse an event stream: JSON for data lines, the literal "[DONE]", ": comment" lines."""
    import json

    events: list[Any] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.count("\n") == 0, f"one line per event expected: {block!r}"
        if block.startswith(":"):
            events.append(block)
        else:
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
