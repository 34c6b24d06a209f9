"""Fixtures for the observability tests: a fake engine that reports RequestRecords the way
EngineClient does, the app over it, and a parsed view of /metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    OverloadedError,
)
from app.engine.params import SamplingParams
from app.engine.protocol import GenerationDelta, RequestRecord, RequestTimings
from app.main import create_app
from tests.api.fakes import FakeEngineClient

REFUSED = (InvalidRequestError, OverloadedError, EngineNotReadyError)


@dataclass
class RecordingFake(FakeEngineClient):
    """FakeEngineClient that, like EngineClient, reports one RequestRecord per request it
    admitted (none for those it refused up front): outcome is the finish reason, or
    disconnected / worker_lost."""

    sink: Callable[[RequestRecord], None] | None = None

    def generate(  # type: ignore[override]
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationDelta]:
        inner = super().generate(prompt_ids, params, request_id=request_id, **kwargs)
        return self._recorded(inner, request_id, len(prompt_ids))

    async def _recorded(
        self, inner: AsyncIterator[GenerationDelta], request_id: str, num_prompt: int
    ) -> AsyncIterator[GenerationDelta]:
        arrival = time.monotonic()
        first: float | None = None
        last: float | None = None
        gaps: list[float] = []
        outputs = 0
        outcome: str | None = None
        refused = False
        try:
            async for delta in inner:
                now = time.monotonic()
                if delta.token_ids:
                    if first is None:
                        first = now
                    elif last is not None:
                        gaps.append(now - last)
                    last = now
                outputs = delta.num_output_tokens
                if delta.finish_reason is not None:
                    outcome = delta.finish_reason
                yield delta
        except REFUSED:
            refused = True
            raise
        except EngineDeadError:
            outcome = "worker_lost"
            raise
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            if not refused and self.sink is not None:
                now = time.monotonic()
                f, lt = first or now, last or now
                queue = (f - arrival) / 2  # half of the wait for the first token in the queue
                timings = RequestTimings(
                    queue=queue,
                    time_to_first_token=f - arrival,
                    decode=lt - f,
                    total=now - arrival,
                    mean_inter_token=sum(gaps) / len(gaps) if gaps else 0.0,
                    max_inter_token=max(gaps, default=0.0),
                )
                self.sink(
                    RequestRecord(
                        request_id=request_id,
                        outcome=outcome or "disconnected",
                        num_prompt_tokens=num_prompt,
                        num_output_tokens=outputs,
                        timings=timings,
                        prefill_seconds=(f - arrival - queue) if first is not None else None,
                        inter_token_gaps=tuple(gaps),
                    )
                )


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
