from __future__ import annotations

import pytest

from tests.bench.virtual_time import VirtualClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """Virtual time for this test: asyncio's clock and app.bench's time.perf_counter."""
    c = VirtualClock()
    c.install(monkeypatch)
    return c
