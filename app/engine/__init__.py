"""The engine: scheduler, KV bookkeeping, model runner, sampler and the in-process API.

Never imports fastapi, starlette, pydantic_settings or prometheus_client.
"""

from app.engine.config import EngineConfig
from app.engine.errors import EngineDeadError, EngineError, InvalidRequestError
from app.engine.params import SamplingParams
from app.engine.protocol import RequestOutput, StepResult, StepStats

__all__ = [
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "InvalidRequestError",
    "RequestOutput",
    "SamplingParams",
    "StepResult",
    "StepStats",
]
