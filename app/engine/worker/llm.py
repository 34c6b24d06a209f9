"""LLM: the engine in the caller's own process (tests, benchmarks, `gpt2-serve generate`).

The same contract as the service: requests are validated into AddRequest by the engine client's
validate_request, applied to an EngineCore as the worker applies them, and the outputs go through
the same OutputProcessor (detokenization, stop strings), so callers get GenerationDeltas and
GenerationResults, as the HTTP layer does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from collections.abc import Sequence as Seq

from app.engine.client.output_processor import OutputProcessor
from app.engine.client.request_state import RequestState
from app.engine.client.tokenizer import GPT2Tokenizer, load_tokenizer
from app.engine.client.validation import validate_request
from app.engine.config import EngineConfig
from app.engine.errors import InvalidRequestError
from app.engine.protocol import GenerationDelta, GenerationResult, SamplingParams, StepStats
from app.engine.worker.engine_core import EngineCore

_ids = itertools.count()

Prompt = str | Seq[int]


class LLM:
    """Synchronous in-process engine: submit, then step; or generate a batch to the end."""

    def __init__(self, config: EngineConfig, core: EngineCore | None = None) -> None:
        self.core = core or EngineCore(config)
        self.tokenizer: GPT2Tokenizer = load_tokenizer(self.core.runner.model_dir)
        self.outputs = OutputProcessor(
            self.tokenizer.token_bytes,
            self.tokenizer.special_ids,
            admission=None,
            abort=self.core.abort_request,
        )
        self._live: dict[str, RequestState] = {}
        self._by_handle: dict[int, RequestState] = {}
        self._handles = itertools.count(1)
        self.last_stats: StepStats | None = None  # of the last step that ran

    def encode(self, prompt: Prompt) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def submit(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        if params.timeout is not None:  # deadlines run on an event loop (AsyncEngine)
            raise InvalidRequestError("timeout", "is not supported by the in-process LLM")
        request_id = request_id or f"req-{next(_ids)}"
        handle = next(self._handles)
        ids = self.encode(prompt)
        request = validate_request(request_id, ids, params, self.core.limits, handle)
        req = self.outputs.add(request_id, handle, len(ids), params)
        self._live[request_id] = self._by_handle[handle] = req
        self.core.apply(request)
        return request_id

    def abort(self, request_id: str) -> bool:
        """Cancel a request: its KV blocks are free before the next step, which reports its last
        delta (finish_reason "abort"). False if it is unknown or already finished."""
        return request_id in self._live and self.core.abort_request(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def step(self) -> tuple[GenerationDelta, ...]:
        """One engine step; the deltas it produced, one per request that moved."""
        result = self.core.step()
        if result.stats is not None:
            self.last_stats = result.stats
        self.outputs.process(result)
        deltas: list[GenerationDelta] = []
        for handle in result.handles:
            req = self._by_handle.get(handle)
            while req is not None and not req.queue.empty():
                delta = req.queue.get_nowait()
                assert isinstance(delta, GenerationDelta)  # failures need an event loop
                deltas.append(delta)
                if delta.finished:
                    self._forget(req)
                    req = None
        return tuple(deltas)

    def _forget(self, req: RequestState) -> None:
        self._live.pop(req.request_id, None)
        self._by_handle.pop(req.handle, None)

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[GenerationDelta]:
        """Yield this request's deltas as they come; other live requests advance alongside."""
        request_id = self.submit(prompt, params)
        try:
            while request_id in self._live:
                for delta in self.step():
                    if delta.request_id == request_id:
                        yield delta
        finally:
            req = self._live.get(request_id)
            if req is not None:  # left early
                self._forget(req)
                self.core.abort_request(request_id)

    def generate(
        self, prompts: Seq[Prompt], params: SamplingParams | Seq[SamplingParams]
    ) -> list[GenerationResult]:
        """Run every prompt to completion, all in one continuous batch."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        results: dict[str, GenerationResult] = {}
        for prompt, p in zip(prompts, plist, strict=True):
            results[self.submit(prompt, p)] = GenerationResult()
        while self.has_unfinished():
            for delta in self.step():
                if delta.request_id in results:
                    results[delta.request_id].add(delta)
        return list(results.values())
