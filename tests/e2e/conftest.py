from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server


@pytest.fixture(scope="package")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service on loopback, real worker process, room for 4 running + 4 queued requests.
    A stream whose first token is late gets its headers (and keep-alives) after a second."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    s = Server(tiny_model_dir, log, max_num_seqs=4, max_queued_requests=4, keep_alive_seconds=1)
    yield s
    assert s.stop() == 0, s.log_path.read_text()[-3000:]
