"""The engine. The contract both processes share lives at this level (protocol.py, errors.py,
config.py); the folders say which process the rest runs in:

- client/  the HTTP process: AsyncEngine (the EngineClient the routes use), worker handle,
           admission, output processing, tokenizer. No torch, no numpy.
- core/    the worker process, pure Python: sequences, scheduler, KV blocks, prefill pacer.
- worker/  the worker process, torch: step loop, EngineCore, model runner, sampler, CUDA graphs;
           and llm.py, the same engine in the caller's own process.

Nothing here imports fastapi, starlette, pydantic or prometheus_client.
"""

from app.engine.config import EngineConfig
from app.engine.errors import EngineDeadError, EngineError, InvalidRequestError
from app.engine.protocol import GenerationDelta, GenerationResult, SamplingParams

__all__ = [
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "GenerationDelta",
    "GenerationResult",
    "InvalidRequestError",
    "SamplingParams",
]
