"""observe_all counts many values into a histogram with one increment per bucket: the same
exposition as observe() per value, in memory and in multiprocess mode (--api-workers)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from app.metrics import observe_all

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 1.0)


def _values(seed: int) -> list[float]:
    rng = random.Random(seed)
    values = [rng.expovariate(40.0) for _ in range(300)]
    return values + list(BUCKETS) + [0.0, 5.0]  # on every bound, zero, past the last bound


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_observe_all_exposes_what_observe_per_value_does(seed: int) -> None:
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("gaps", "g", registry=one, buckets=BUCKETS)
    h_bulk = Histogram("gaps", "g", registry=bulk, buckets=BUCKETS)
    values = _values(seed)
    for v in values:
        h_one.observe(v)
    observe_all(h_bulk, values[:150])
    observe_all(h_bulk, values[150:])  # adds to what is there
    got, want = _samples(bulk), _samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_this_prometheus_client_takes_the_bulk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fields observe_all counts into are there (else it falls back to one observe per
    value, correct but slow: a prometheus_client upgrade that moved them shows here)."""
    h = Histogram("gaps", "g", registry=CollectorRegistry(), buckets=BUCKETS)

    def refuse(amount: float) -> None:
        raise AssertionError("observe() called: the bulk path was not taken")

    monkeypatch.setattr(h, "observe", refuse)
    observe_all(h, [0.002, 0.02, 0.2])


_MULTIPROCESS = textwrap.dedent(
    """
    import json, random, sys
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.multiprocess import MultiProcessCollector
    from app.metrics import observe_all

    values = [random.Random(0).expovariate(40.0) for _ in range(200)] + [0.01, 2.0]
    buckets = (0.001, 0.01, 0.1, 1.0)
    one = Histogram("one", "g", registry=None, buckets=buckets)
    bulk = Histogram("bulk", "g", registry=None, buckets=buckets)
    for v in values:
        one.observe(v)
    observe_all(bulk, values)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            out[s.name + "|" + s.labels.get("le", "")] = s.value
    print(json.dumps(out))
    """
)


def test_observe_all_in_multiprocess_mode(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    samples = json.loads(result.stdout)
    ones = {k[len("one") :]: v for k, v in samples.items() if k.startswith("one")}
    bulks = {k[len("bulk") :]: v for k, v in samples.items() if k.startswith("bulk")}
    assert ones and ones.keys() == bulks.keys()
    for key, value in ones.items():
        assert bulks[key] == pytest.approx(value), key
