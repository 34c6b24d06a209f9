"""generate() and add_request() over one `_add`: how an engine client hands out a request's
deltas, written once for AsyncEngine and the API tests' fake (which must behave the same)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence

from app.engine.client.output_processor import OutputProcessor
from app.engine.client.request_state import RequestState
from app.engine.protocol import DeltaSink, GenerationDelta, SamplingParams


class RequestEntry:
    """Mixin: the subclass provides `outputs` and `_add` (validate, admit, register the request
    with `outputs`, start it; raise at once if it is refused)."""

    outputs: OutputProcessor

    def _add(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        sink: DeltaSink | None,
        arrival: float | None = None,
    ) -> RequestState:
        raise NotImplementedError

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        """See EngineClient.generate (app/engine/engine_client.py)."""
        req = self._add(prompt_ids, params, request_id, None)
        try:
            async for delta in self.outputs.deltas(req):
                yield delta
        finally:
            self.outputs.leave(req)

    def add_request(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        sink: DeltaSink,
        arrival: float | None = None,
    ) -> Callable[[], None]:
        """See EngineClient.add_request (app/engine/engine_client.py)."""
        req = self._add(prompt_ids, params, request_id, sink, arrival)
        return functools.partial(self.outputs.leave, req)
