"""The seed baseline: how GPT-2 was served before gpt2-serve's engine. transformers'
GPT2LMHeadModel and its generate() behind FastAPI, one request at a time.

    python -m baselines.seed_server --model DIR_OR_HUB_ID --port 8001

Honest on purpose: fp32, torch's default threads, the stock generate() with its KV cache, no
batching (an asyncio.Lock: a request waits until the one before it has finished). Endpoints:
POST /v1/completions (OpenAI: prompt as a string, max_tokens, temperature (0: greedy), top_p,
stream, stream_options.include_usage, and vLLM's ignore_eos), GET /v1/models, GET /health.

Streaming: generate() runs in a thread with a streamer that hands each new token id to the
event loop; text is the decoded ids so far, held back while it ends in a partial character.
A client that leaves stops generation at the next token (a stopping criterion).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from transformers import AutoTokenizer, GPT2LMHeadModel, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer


class BadRequest(ValueError):
    pass


class _QueueStreamer(BaseStreamer):
    """generate() calls put() with the prompt, then with each new token, then end()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def _send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self._send(value.reshape(-1).tolist())

    def end(self) -> None:
        self._send(None)

    def fail(self, exc: BaseException) -> None:
        self._send(exc)
        self._send(None)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class SeedModel:
    def __init__(self, model: str, name: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = GPT2LMHeadModel.from_pretrained(model, dtype=torch.float32)
        self.model.train(False)  # eval mode: no dropout
        self.name = name
        self.max_len = int(self.model.config.n_positions)
        self.lock = asyncio.Lock()  # one generation at a time

    def _generate(self, kwargs: dict[str, Any], streamer: _QueueStreamer) -> None:
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs, streamer=streamer)
        except Exception as exc:  # reported to the waiting request
            streamer.fail(exc)

    async def tokens(self, prompt_ids: list[int], options: dict[str, Any]) -> AsyncIterator[int]:
        """Generated token ids, one by one, holding the lock until generate() has returned."""
        async with self.lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            stop = threading.Event()
            kwargs = {
                "input_ids": torch.tensor([prompt_ids]),
                "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long),
                "max_new_tokens": options["max_tokens"],
                "pad_token_id": self.tokenizer.eos_token_id,
                "stopping_criteria": StoppingCriteriaList([_StopWhenSet(stop)]),
                **options["sampling"],
            }
            streamer = _QueueStreamer(loop, queue)
            thread = threading.Thread(target=self._generate, args=(kwargs, streamer), daemon=True)
            thread.start()
            try:
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    for token in item:
                        yield token
            finally:
                stop.set()
                thread.join()  # at most one more forward step; the lock stays held until then


def parse_request(body: Any, max_len: int, tokenizer: Any) -> tuple[list[int], dict[str, Any]]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string")
    max_tokens = body.get("max_tokens") or 16
    temperature = float(body.get("temperature", 1.0))
    top_p = float(body.get("top_p", 1.0))
    if not isinstance(max_tokens, int) or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise BadRequest("need max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
    prompt_ids = list(tokenizer.encode(prompt))
    if len(prompt_ids) + max_tokens > max_len:
        raise BadRequest(f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) > {max_len}")
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
    if body.get("ignore_eos"):
        sampling["min_new_tokens"] = max_tokens  # EOS is suppressed until max_tokens
    stream_options = body.get("stream_options") or {}
    return prompt_ids, {
        "max_tokens": max_tokens,
        "sampling": sampling,
        "stream": bool(body.get("stream")),
        "include_usage": bool(stream_options.get("include_usage")),
    }


def _error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def create_app(seed: SeedModel) -> FastAPI:
    app = FastAPI(title="seed GPT-2 baseline")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": seed.name, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            prompt_ids, options = parse_request(await request.json(), seed.max_len, seed.tokenizer)
        except (BadRequest, ValueError, TypeError) as exc:
            return _error(400, str(exc))
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": seed.name,
        }
        pieces = _pieces(seed, prompt_ids, options)
        if options["stream"]:
            return StreamingResponse(
                _stream(head, pieces, options["include_usage"]), media_type="text/event-stream"
            )
        try:
            done = [piece async for piece in pieces]
        except Exception as exc:
            return _error(500, repr(exc))
        _, finish, usage = done[-1]
        text = "".join(piece for piece, _, _ in done)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return JSONResponse({**head, "choices": [choice], "usage": usage})

    return app


async def _pieces(
    seed: SeedModel, prompt_ids: list[int], options: dict[str, Any]
) -> AsyncIterator[tuple[str, str | None, dict[str, int]]]:
    """(new text, finish_reason on the last piece, usage so far) per generated token."""
    ids: list[int] = []
    sent = ""
    async for token in seed.tokens(prompt_ids, options):
        ids.append(token)
        text = str(seed.tokenizer.decode(ids, skip_special_tokens=True))
        if text.endswith("\ufffd"):
            continue  # a partial character: wait for the rest of its bytes
        yield text[len(sent) :], None, _usage(prompt_ids, ids)
        sent = text
    finish = "length" if len(ids) >= options["max_tokens"] else "stop"
    yield "", finish, _usage(prompt_ids, ids)


def _usage(prompt_ids: list[int], ids: list[int]) -> dict[str, int]:
    n, m = len(prompt_ids), len(ids)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


async def _stream(
    head: dict[str, Any],
    pieces: AsyncIterator[tuple[str, str | None, dict[str, int]]],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    usage: dict[str, int] = {}
    try:
        async for text, finish, counts in pieces:
            usage = counts
            if text or finish:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                yield _sse({**head, "choices": [choice]})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": usage})
    except Exception as exc:
        yield _sse({"error": {"message": repr(exc), "type": "server_error", "code": 500}})
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m baselines.seed_server", description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--served-model-name", help="default: the directory's name")
    args = parser.parse_args(argv)
    name = args.served_model_name or Path(args.model).name or args.model
    seed = SeedModel(args.model, name)
    uvicorn.run(create_app(seed), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
