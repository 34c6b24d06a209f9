"""Fixtures for the observability tests: a fake engine that reports RequestRecords the way
EngineClient does, the app over it, and a parsed view of /metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient


class RecordingFake(FakeEngineClient):
    """The fake engine; its OutputProcessor reports one RequestRecord per admitted request to
    `sink`, which the client fixture points at the app's telemetry (as main.py wires
    AsyncEngine's request_sink)."""


@pytest.fixture
def fake() -> RecordingFake:
    return RecordingFake()


@pytest.fixture
def settings() -> Settings:
    return Settings(model="fake-gpt2", keep_alive_seconds=5.0)


@pytest.fixture
def client(fake: RecordingFake, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, fake)
    fake.sink = app.state.telemetry.on_record
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


class Scrape:
    """Samples of one /metrics exposition: value(name, **labels) -> float (0 when absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.families = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str) -> float:
        """Sum over every label set of one sample name."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def label_values(self) -> set[str]:
        return {v for (_, labels) in self.samples for _, v in labels}


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition with a deadline (no fixed sleeps that hope)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path
