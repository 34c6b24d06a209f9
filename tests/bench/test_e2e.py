"""`gpt2-serve bench` against the real service (metrics cross-check) with the seed baseline
(baselines/seed_server.py) side by side, both on the tiny random GPT-2."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.bench.client import completion_payload, stream_completion
from app.bench.workload import RequestSpec
from app.cli import main
from tests.e2e.server import Server, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """[gpt2-serve URL, seed baseline URL]; the seed server loads while gpt2-serve starts."""
    logs = tmp_path_factory.mktemp("bench-logs")
    port = free_port()
    seed_log = open(logs / "seed.log", "wb")  # noqa: SIM115 - closed below
    seed = subprocess.Popen(
        [sys.executable, "-m", "baselines.seed_server", "--model", str(tiny_model_dir),
         "--port", str(port)],
        cwd=REPO, stdout=seed_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ours = None
    try:
        ours = Server(tiny_model_dir, logs / "server.log", max_num_seqs=4, max_model_len=64)
        seed_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert seed.poll() is None, (logs / "seed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "seed server not up in 90 s"
            try:
                if httpx.get(seed_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield [ours.url, seed_url]
    finally:
        seed.terminate()
        seed.wait(15)
        seed_log.close()
        if ours is not None:
            assert ours.stop() == 0, ours.log_path.read_text()[-3000:]


def test_bench_cross_checks_gpt2_serve_and_compares_with_the_seed(
    servers: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours, seed = servers
    out = tmp_path / "bench.json"
    argv = ["bench", "--url", ours, "--baseline-url", seed, "--concurrency", "2",
            "--num-requests", "4", "--warmup", "1", "--prompt-len", "8", "--output-len", "4",
            "--ignore-eos", "--json", str(out), "--no-progress",
            # a loaded 2-core CI machine: generous overhead, the lower bounds stay strict
            "--metrics-tolerance", "1.0", "0.5"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"$ gpt2-serve {' '.join(argv)}\n")
    doc = json.loads(out.read_text())
    ours_point, seed_point = (t["points"][0] for t in doc["targets"])
    for point in (ours_point, seed_point):
        stats = point["stats"]
        assert (stats["completed"], stats["failed"], stats["output_tokens"]) == (4, 0, 16)
        assert stats["mean_prompt_tokens"] == 8  # the passage prompts: exact GPT-2 counts
        # a chunk can carry two tokens (a held-back partial character): at most 3 gaps each
        assert stats["ttft"]["count"] == 4 and 4 <= stats["itl"]["count"] <= 12
    check = ours_point["metrics_check"]
    assert check["agree"] is True, json.dumps(check, indent=1)
    assert check["server_successes"] == check["client_completed"] == 4
    counts = {m["metric"]: (m["server_count"], m["client_count"]) for m in check["metrics"]}
    assert counts == {
        "gpt2_time_to_first_token_seconds": (4, 4),
        "gpt2_inter_token_latency_seconds": (12, 12),
        "gpt2_e2e_request_latency_seconds": (4, 4),
    }
    assert seed_point["metrics_check"] is None  # no gpt2-serve /metrics there
    (row,) = doc["comparison"]
    assert row["baseline"] == "baseline" and row["output_tok_s_ratio"] > 0
    assert "server metrics agree" in printed and "== ours / baseline" in printed


def test_seed_server_streams_through_the_bench_client(servers: list[str]) -> None:
    seed = servers[1]

    async def go() -> list[object]:
        async with httpx.AsyncClient(timeout=60) as client:
            payload = completion_payload(
                RequestSpec(" it was the", 3, 5), None, ignore_eos=True, temperature=0.0
            )
            streamed = await stream_completion(
                client, seed + "/v1/completions", payload, timeout=60
            )
            plain = await client.post(
                seed + "/v1/completions",
                json={"prompt": " it was the", "max_tokens": 5, "temperature": 0},
            )
            bad = await client.post(seed + "/v1/completions", json={"prompt": ""})
            return [streamed, plain, bad]

    streamed, plain, bad = asyncio.run(go())
    assert streamed.ok, streamed.detail
    assert streamed.usage_reported and (streamed.prompt_tokens, streamed.output_tokens) == (3, 5)
    assert 1 <= len(streamed.token_times) <= 5 and streamed.ttft is not None
    assert plain.status_code == 200
    body = plain.json()
    assert body["usage"]["completion_tokens"] <= 5
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]


def test_bench_spreads_a_point_over_client_processes(
    servers: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--processes 2: the point's streams and requests are split over two client processes,
    their results merged (and still cross-checked against the server's metrics), and the
    report gives each process's CPU."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--url", servers[0], "--concurrency", "3", "--processes", "2",
            "--num-requests", "5", "--warmup", "1", "--prompt-len", "8", "--output-len", "4",
            "--ignore-eos", "--json", str(out), "--no-progress",
            "--metrics-tolerance", "1.0", "0.5"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    (point,) = json.loads(out.read_text())["targets"][0]["points"]
    stats = point["stats"]
    assert (stats["completed"], stats["failed"], stats["output_tokens"]) == (5, 0, 20)
    assert len(point["client_cpu_seconds"]) == 2 and all(c > 0 for c in point["client_cpu_seconds"])
    assert point["metrics_check"]["agree"] is True
    assert "2 client process(es)" in capsys.readouterr().out


def test_bench_chat_against_gpt2_serve(
    servers: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chat on the real service (64-token window): each turn's prompt grows by the answer and
    the next message, /tokenize counts it, conversations stop before the turn that would not
    fit, and the server's histograms agree with the client (the /tokenize calls are not
    generation requests)."""
    out = tmp_path / "chat.json"
    argv = ["bench", "--url", servers[0], "--chat", "--chat-conversations", "2",
            "--chat-turns", "5", "--chat-system-prompt-len", "8", "--chat-user-len", "4",
            "--output-len", "4", "--ignore-eos", "--warmup", "1", "--json", str(out),
            "--metrics-tolerance", "1.0", "0.5"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    (target,) = json.loads(out.read_text())["targets"]
    assert target["max_model_len"] == 64 and target["prompt_lengths"] == "tokenize"
    conversations = target["conversations"]
    assert all(c["stopped_before_turn"] is not None for c in conversations)
    for c in conversations:
        prompts = [t["prompt_tokens"] for t in c["turns"]]
        # system "system" ":" 8 words "\n", then "user" ":" 4 words "\n" "ass" "istant" ":"
        assert prompts[0] == 11 + 10
        # each later turn: the 4-token answer, "\n" and the next 10-token message
        assert [b - a for a, b in itertools.pairwise(prompts)] == [15] * (len(prompts) - 1)
        assert all(p + 4 <= 64 for p in prompts) and prompts[-1] + 15 + 4 > 64
        assert [t["output_tokens"] for t in c["turns"]] == [4] * len(prompts)
    assert target["metrics_check"]["agree"] is True, json.dumps(target["metrics_check"])
    assert "prefix cache hit rate: " in printed and "stopped at the context window" in printed
