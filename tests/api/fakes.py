"""A deterministic stand-in for EngineClient, so the HTTP layer is tested without a model.

Tokenizer: one token per UTF-8 byte (ids 0..255) plus <|endoftext|> = 256. A multi-byte
character therefore spans several tokens, which exercises the "hold back half a character" path.

Generation: the continuation is a fixed script (`FakeEngineClient.script`), prefixed with
"<seed>" when the request has a seed, one token per delta, then <|endoftext|> (finish "stop")
unless max_tokens runs out first (finish "length"). Stop strings, stop token ids, ignore_eos,
logprobs, prompt logprobs, timeouts and the engine's errors behave as the EngineClient contract
says.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from app.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    OverloadedError,
)
from app.engine.params import SamplingParams
from app.engine.protocol import GenerationDelta, ModelInfo, RequestTimings, TokenLogprobs

EOS = 256
VOCAB = 257
TIMINGS = RequestTimings(
    queue=0.001,
    time_to_first_token=0.010,
    decode=0.020,
    total=0.030,
    mean_inter_token=0.002,
    max_inter_token=0.005,
)


@dataclass
class Call:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    stop: tuple[str, ...]
    include_stop_str_in_output: bool
    timeout: float | None


@dataclass
class FakeEngineClient:
    script: str = " the quick brown fox"
    max_model_len: int = 128
    token_delay: float = 0.0  # seconds before each delta
    ready: bool = True
    draining: bool = False
    overloaded: bool = False
    die_after: int | None = None  # raise EngineDeadError after this many deltas
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    started: bool = False
    shutdown_grace: float | None = None

    def __post_init__(self) -> None:
        self.info = ModelInfo(
            model_id="fake-gpt2",
            model_path="/models/fake-gpt2",
            vocab_size=VOCAB,
            max_model_len=self.max_model_len,
            eos_token_id=EOS,
            dtype="float32",
            device="cpu",
            max_num_seqs=4,
            kv_slots=4,
        )

    # ---- lifecycle ----------------------------------------------------------------------
    @property
    def is_ready(self) -> bool:
        return self.ready and not self.draining

    @property
    def is_draining(self) -> bool:
        return self.draining

    async def start(self) -> None:
        self.started = True

    def begin_drain(self) -> None:
        self.draining = True

    async def shutdown(self, grace_seconds: float = 30.0) -> None:
        self.shutdown_grace = grace_seconds

    # ---- tokenizer ----------------------------------------------------------------------
    async def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for token_id in token_ids:
            if token_id == EOS:
                if not skip_special_tokens:
                    out += b"<|endoftext|>"
            else:
                out.append(token_id)
        return out.decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        if token_id == EOS:
            return "<|endoftext|>"
        if token_id < 128:
            return chr(token_id)
        return f"bytes:\\x{token_id:02x}"

    def stats(self) -> dict[str, object]:
        return {"running": 0, "waiting": 0, "calls": len(self.calls)}

    # ---- generation -----------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        request_id: str,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        call = Call(
            list(prompt_ids), params, request_id, tuple(stop), include_stop_str_in_output, timeout
        )
        self.calls.append(call)
        return self._run(call)

    def output_ids(self, params: SamplingParams) -> list[int]:
        text = (f"<{params.seed}>" if params.seed is not None else "") + self.script
        return list(text.encode("utf-8"))

    async def _run(self, call: Call) -> AsyncIterator[GenerationDelta]:
        params = call.params
        if self.draining or not self.ready:
            raise EngineNotReadyError("the engine is not ready")
        if self.overloaded:
            raise OverloadedError("the waiting queue is full (256 requests)", retry_after=3)
        self._validate(call)
        script = self.output_ids(params)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        loop = asyncio.get_running_loop()
        started = loop.time()
        text = ""  # decoded, not yet sent
        sent = 0
        done = False
        try:
            for step in range(params.max_tokens):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if self.die_after is not None and step >= self.die_after:
                    raise EngineDeadError("the engine worker died")
                if call.timeout is not None and loop.time() - started > call.timeout:
                    done = True
                    yield self._delta(call, "", (), (), "timeout", step)
                    return
                at_end = step >= len(script)
                token = EOS if at_end and not params.ignore_eos else script[step % len(script)]
                piece = "" if token == EOS else decoder.decode(bytes([token]))
                text += piece
                finish, reason = None, None
                if token == EOS or token in params.stop_token_ids:
                    finish, reason = "stop", token
                elif step + 1 >= params.max_tokens:
                    finish = "length"
                hit = _find_stop(sent_text=text, stops=call.stop)
                if hit is not None:
                    position, matched = hit
                    end = position + (len(matched) if call.include_stop_str_in_output else 0)
                    text, finish, reason = text[:end], "stop", matched
                emit = text if finish else _safe_prefix(text, call.stop)
                text = text[len(emit) :]
                sent += 1
                logprobs = self._logprobs(token, params)
                done = finish is not None
                yield self._delta(call, emit, (token,), logprobs, finish, step + 1, reason)
                if done:
                    return
        finally:
            (self.finished if done else self.aborted).append(call.request_id)

    def _validate(self, call: Call) -> None:
        for token_id in call.prompt_ids:
            if not 0 <= token_id < VOCAB:
                raise InvalidRequestError("prompt", f"token id {token_id} outside [0, {VOCAB})")
        total = len(call.prompt_ids) + call.params.max_tokens
        if total > self.max_model_len:
            raise InvalidRequestError(
                "max_tokens",
                f"prompt ({len(call.prompt_ids)} tokens) + max_tokens ({call.params.max_tokens})"
                f" = {total} exceeds the context window of {self.max_model_len} tokens",
            )

    def _logprobs(self, token: int, params: SamplingParams) -> tuple[TokenLogprobs, ...]:
        if params.logprobs is None:
            return ()
        top = tuple(((token + k) % VOCAB, -0.5 - k) for k in range(params.logprobs))
        return (TokenLogprobs(token_id=token, logprob=-0.5, top=top),)

    def _delta(
        self,
        call: Call,
        text: str,
        token_ids: tuple[int, ...],
        logprobs: tuple[TokenLogprobs, ...],
        finish: str | None,
        num_output: int,
        stop_reason: str | int | None = None,
    ) -> GenerationDelta:
        return GenerationDelta(
            request_id=call.request_id,
            text=text,
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish,
            num_prompt_tokens=len(call.prompt_ids),
            num_output_tokens=num_output,
            stop_reason=stop_reason if finish == "stop" else None,
            timings=TIMINGS if finish else None,
            prompt_logprobs=self._prompt_logprobs(call) if num_output == 1 and token_ids else None,
        )

    @staticmethod
    def _prompt_logprobs(call: Call) -> tuple[TokenLogprobs | None, ...] | None:
        """As the engine: with the first token, each prompt token at -0.25 and rank 1 (none for
        the first), its top k the token itself and the k-1 ids after it."""
        k = call.params.prompt_logprobs
        if k is None:
            return None
        scored = (
            TokenLogprobs(t, -0.25, tuple(((t + j) % VOCAB, -0.25 - j) for j in range(k)), 1)
            for t in call.prompt_ids[1:]
        )
        return (None, *scored)


def _find_stop(sent_text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    hits = [(sent_text.find(s), s) for s in stops if s in sent_text]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: Sequence[str]) -> str:
    """Hold back a tail that could still grow into a stop string."""
    for cut in range(len(text)):
        tail = text[cut:]
        if any(s.startswith(tail) for s in stops):
            return text[:cut]
    return text
