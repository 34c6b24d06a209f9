"""The service under test: the bundled demo model on 127.0.0.1, a free port, CPU, its /metrics.

Started with the project's own interpreter (.venv), never with a client's: the clients live in
their own environments and reach the server only over HTTP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from scripts.compat.verdict import ServerCounts, counts_from_samples

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "app" / "models" / "gpt2-demo"
READY_SECONDS = 240  # model load on a busy 2-core machine
IDLE_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {`name{labels}`: value}, comments skipped."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


class Server:
    """A server already running at `url` (`--url`): only read, never started or stopped."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def model_name(self) -> str:
        models = httpx.get(self.url + "/v1/models", timeout=10).json()
        return str(models["data"][0]["id"])

    def context_window(self) -> int:
        models = httpx.get(self.url + "/v1/models", timeout=10).json()
        return int(models["data"][0]["max_model_len"])

    def counts(self) -> ServerCounts:
        """The counters once nothing is in flight: they move when a request ends, which can be
        a moment after its client has the last byte."""
        deadline = time.monotonic() + IDLE_SECONDS
        while time.monotonic() < deadline:
            stats = httpx.get(self.url + "/v1/engine/stats", timeout=10).json()
            if stats["requests_in_flight"] == 0:
                break
            time.sleep(0.2)
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return counts_from_samples(parse_samples(text))


class LocalServer(Server):
    """`with LocalServer(log_path) as server:` starts gpt2-serve and stops it (SIGTERM, then
    SIGKILL) on the way out, whatever happened inside."""

    def __init__(self, log_path: Path, extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        command = [
            sys.executable, "-m", "app.cli", "serve",
            "--model", str(DEMO_MODEL),
            "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
            "--log-level", "WARNING",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited before it was ready:\n{tail}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready in {READY_SECONDS} s ({self.log_path})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
