"""The live view behind EngineClient.stats(): scheduler counts, KV use, recent step times."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.engine.client.engine_client import EngineClient


def describe(client: EngineClient) -> dict[str, object]:
    s = client.last_stats
    steps = sorted(client.recent_step_seconds)
    return {
        "ready": client.is_ready,
        "draining": client.is_draining,
        "worker_alive": client.is_worker_alive,
        "worker_pid": client.worker_pid,
        "worker_restarts": client.worker_restarts,
        "requests_in_flight": client.num_in_flight,
        "queued_prompt_tokens": client.queued_prompt_tokens,
        "num_running": s.num_running if s else 0,
        "num_waiting": s.num_waiting if s else 0,
        "kv_slots_used": s.kv_slots_used if s else 0,
        "kv_slots_total": s.kv_slots_total if s else None,
        "last_batch": {
            "sequences": s.batch_size,
            "decode_tokens": s.num_decode_tokens,
            "prefill_tokens": s.num_prefill_tokens,
        }
        if s
        else None,
        "recent_step_seconds": {
            "count": len(steps),
            "p50": steps[len(steps) // 2] if steps else None,
            "max": steps[-1] if steps else None,
        },
        "drain_rate_requests_per_second": client.admission.drain_rate(),
    }
