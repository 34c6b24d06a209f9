"""In-process Python API over EngineCore: synchronous (LLM) and asyncio (AsyncLLM) iteration.

Tests, the benchmark and the HTTP layer all go through these. AsyncLLM runs the step loop in a
background thread: the event loop only enqueues commands and receives outputs, so a step never
blocks it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from app.engine.client.tokenizer import GPT2Tokenizer, load_tokenizer
from app.engine.client.validation import validate_request
from app.engine.config import EngineConfig
from app.engine.core.sequence import TokenLogprobs
from app.engine.errors import EngineDeadError
from app.engine.params import SamplingParams
from app.engine.protocol import RequestOutput
from app.engine.worker.engine_core import EngineCore

log = logging.getLogger(__name__)
_ids = itertools.count()

Prompt = str | Seq[int]


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # with params.prompt_logprobs


class LLM:
    """Synchronous in-process engine."""

    def __init__(self, config: EngineConfig, core: EngineCore | None = None) -> None:
        self.core = core or EngineCore(config)
        self.tokenizer: GPT2Tokenizer = load_tokenizer(self.core.runner.model_dir)

    def encode(self, prompt: Prompt) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    def submit(self, prompt: Prompt, params: SamplingParams, request_id: str | None = None) -> str:
        request_id = request_id or f"req-{next(_ids)}"
        self.core.add_request(request_id, self.encode(prompt), params)
        return request_id

    def abort(self, request_id: str) -> bool:
        return self.core.abort_request(request_id)

    def step(self) -> tuple[RequestOutput, ...]:
        return self.core.step().outputs

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[RequestOutput]:
        """Yield this request's outputs as they come; other live requests advance alongside."""
        request_id = self.submit(prompt, params)
        try:
            while True:
                for out in self.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            if request_id in self.core.requests:
                self.core.abort_request(request_id)

    def generate(
        self, prompts: Seq[Prompt], params: SamplingParams | Seq[SamplingParams]
    ) -> list[Completion]:
        """Run every prompt to completion, all in one continuous batch."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        results: dict[str, Completion] = {}
        for prompt, p in zip(prompts, plist, strict=True):
            ids = self.encode(prompt)
            results[self.submit(ids, p)] = Completion("", ids)
        while self.core.has_unfinished():
            for out in self.step():
                c = results.get(out.request_id)
                if c is not None:
                    c.request_id = out.request_id
                    c.token_ids.extend(out.new_token_ids)
                    c.logprobs.extend(out.new_logprobs)
                    if out.prompt_logprobs is not None:
                        c.prompt_logprobs = list(out.prompt_logprobs)
                    c.finish_reason = out.finish_reason
        for c in results.values():
            c.text = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        return list(results.values())


class AsyncLLM:
    """asyncio front of an EngineCore stepped by a background thread."""

    def __init__(self, config: EngineConfig, core: EngineCore | None = None) -> None:
        self.core = core or EngineCore(config)
        self.tokenizer: GPT2Tokenizer = load_tokenizer(self.core.runner.model_dir)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._lock = threading.Lock()
        self.dead: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-core", daemon=True)
        self._thread.start()

    async def generate(
        self, prompt_ids: Seq[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield outputs for one request; leaving the iteration early aborts it."""
        if self.dead is not None:
            raise EngineDeadError(f"engine stopped: {self.dead}")
        validate_request(prompt_ids, params, self.core.limits)  # fail before queueing
        request_id = request_id or f"req-{next(_ids)}"
        stream: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            self._streams[request_id] = (asyncio.get_running_loop(), stream)
        self._inbox.put(("add", (request_id, list(prompt_ids), params)))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def shutdown(self) -> None:
        self._inbox.put(("stop", None))
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while self._drain_inbox(block=not self.core.has_unfinished()):
                for out in self.core.step().outputs:
                    self._publish(out.request_id, out)
            error: BaseException = EngineDeadError("engine shut down")
        except Exception as exc:  # a crashed step must not leave callers waiting forever
            log.exception("engine step failed")
            error = EngineDeadError(f"engine step failed: {exc!r}")
        self.dead = error
        with self._lock:
            pending = list(self._streams)
        for request_id in pending:
            self._publish(request_id, error)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands; False once asked to stop."""
        while True:
            try:
                kind, arg = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "abort":
                self.core.abort_request(arg)
            else:
                try:
                    self.core.add_request(*arg)
                except Exception as exc:
                    self._publish(arg[0], exc)

    def _publish(self, request_id: str, item: Any) -> None:
        with self._lock:
            target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)
