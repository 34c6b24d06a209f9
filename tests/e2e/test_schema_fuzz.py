"""schemathesis over the live /openapi.json against the real engine: whatever it sends, the
service never answers with a server error, and its answers match the documented schemas.
(The CLI, because schemathesis' pytest plugin does not load under pytest 9.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.e2e.server import Server

CHECKS = (
    "not_a_server_error,status_code_conformance,response_schema_conformance,"
    "content_type_conformance"
)


def test_schemathesis_finds_no_server_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis CLI missing: install the dev extra"
    # A short context keeps each generated request (max_tokens up to the window) quick.
    server = Server(tiny_model_dir, tmp_path / "server.log", max_model_len=64)
    try:
        args = [
            st,
            "run",
            server.url + "/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "10",
            "--request-timeout",
            "60",
            "--generation-deterministic",
            "--workers",
            "2",
            "--phases",
            "examples,coverage,fuzzing",
        ]
        run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        assert server.stop() == 0
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
