"""Multi-turn chat: conversations whose every turn resends the whole conversation so far.

`conversations` conversations run at once; the turns of each run one after another. A turn's
prompt is the previous turn's prompt, the model's actual answer to it, and a new user message,
sent to /v1/completions as one text:

    system: <system_prompt_len words>\\n        (only with a system prompt; the same in all)
    user: <user_len words>\\nassistant:<answer 1>\\n
    user: <user_len words>\\nassistant:<answer 2>\\n
    user: <user_len words>\\nassistant:          <- the prompt of turn 3

/v1/completions rather than /v1/chat/completions: the text is then exactly the previous
prompt plus its answer plus the new message, so in tokens it starts with everything the server
saw and generated on the previous turn (the chat endpoint renders messages with a server-side
template, and re-rendering an answer need not give back the tokens that were generated). Every
turn is a growing shared prefix a prefix cache can serve; the report puts the server's hit rate
beside the latency of each turn. Words come from the passage of app/bench/workload.py (one
GPT-2 token each); user messages start at distinct places, so conversations share nothing but
the system prompt.

The context window (`max_model_len` of GET /v1/models, or given) bounds a conversation: before
each turn its prompt is counted (the server's POST /tokenize when it has one, gpt2-serve and
vLLM do; otherwise the previous turn's usage plus an estimate of the new text) and a turn whose
prompt plus max_tokens would not fit is not sent: the conversation stops there and the report
says how many stopped, and before which turn. Cutting old turns instead would break the shared
prefix the workload exists to measure. A failed turn also ends its conversation (there is no
answer to continue from).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field

import httpx

from app.bench.client import RequestResult, completion_payload, served_model, stream_completion
from app.bench.metrics_check import CrossCheck, Tolerance, cross_check, scrape, scrape_settled
from app.bench.prefix_cache import HitRate, hit_rate, scrape_counters
from app.bench.runner import Target
from app.bench.workload import WORDS, RequestSpec, WorkloadError, passage_words, text_prompt


@dataclass(frozen=True)
class ChatSettings:
    conversations: int = 16
    turns: int = 4
    system_prompt_len: int = 0  # words of the shared system prompt (0: none)
    user_len: int = 32  # words of each user message
    output_len: int = 128  # max_tokens of each answer
    ignore_eos: bool = False
    temperature: float = 0.0
    warmup: int = 2  # single requests before the run, sharing nothing with it
    timeout: float = 120.0  # per request
    seed: int = 0
    max_model_len: int | None = None  # None: what GET /v1/models says, if anything
    metrics_check: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)

    def __post_init__(self) -> None:
        for name in ("conversations", "turns", "user_len", "output_len"):
            if getattr(self, name) < 1:
                raise WorkloadError(f"chat {name} must be >= 1, got {getattr(self, name)}")
        if self.system_prompt_len < 0:
            raise WorkloadError(
                f"chat system_prompt_len must be >= 0, got {self.system_prompt_len}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise WorkloadError(f"chat max_model_len must be >= 2, got {self.max_model_len}")

    def describe(self) -> dict[str, object]:
        return {
            "workload": "chat",
            "conversations": self.conversations,
            "turns": self.turns,
            "system_prompt_len": self.system_prompt_len,
            "user_len": self.user_len,
            "output_len": self.output_len,
            "seed": self.seed,
        }


def system_prompt(settings: ChatSettings) -> str:
    """The passage's opening, as --shared-prefix-len uses it: one text for every conversation."""
    if not settings.system_prompt_len:
        return ""
    return "system:" + passage_words(0, settings.system_prompt_len) + "\n"


def user_messages(settings: ChatSettings) -> list[list[str]]:
    """messages[c][t]: conversation c's user message of turn t, ending where the answer starts.
    Starts are dealt from a seeded shuffle of the passage's words, first turns first, so no two
    conversations open with the same message (up to as many conversations as the passage has
    words)."""
    rng = random.Random(f"{settings.seed}/chat")
    deck: list[int] = []
    messages: list[list[str]] = [[] for _ in range(settings.conversations)]
    for _ in range(settings.turns):
        for conversation in messages:
            if not deck:
                deck = list(range(len(WORDS)))
                rng.shuffle(deck)
            words = passage_words(deck.pop(), settings.user_len)
            conversation.append(f"user:{words}\nassistant:")
    return messages


# GPT-2's pre-tokenizer (letters, digits, other symbols, each with an optional leading space;
# runs of whitespace): every piece is at least one token, and a common word exactly one.
_PIECES = re.compile(r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")


def estimate_tokens(text: str) -> int:
    return len(_PIECES.findall(text))


class PromptCounter:
    """A prompt's length in the server's tokens: POST /tokenize when the server has it (asked
    once; a server without it is never asked again), else an estimate."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, model: str | None) -> None:
        self._client, self._url, self._model = client, base_url + "/tokenize", model
        self.exact: bool | None = None  # unknown until the first count

    async def count(self, prompt: str, known: int | None, new_text: str) -> int:
        """`known`: tokens of the prompt without `new_text` (the previous turn's usage), if
        the server reported them."""
        if self.exact is not False:
            counted = await self._tokenize(prompt)
            self.exact = counted is not None
            if counted is not None:
                return counted
        if known is None:
            return estimate_tokens(prompt)
        return known + estimate_tokens(new_text)

    async def _tokenize(self, prompt: str) -> int | None:
        body: dict[str, object] = {"prompt": prompt}
        if self._model is not None:
            body["model"] = self._model
        try:
            response = await self._client.post(self._url, json=body)
            count = response.json().get("count") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return count if isinstance(count, int) and not isinstance(count, bool) else None


@dataclass
class Conversation:
    turns: list[RequestResult] = field(default_factory=list)  # the turns sent, in order
    stopped_before: int | None = None  # the (1-based) turn that did not fit the window
    stop_detail: str = ""


@dataclass
class ChatResult:
    target: Target
    model: str | None
    settings: ChatSettings
    max_model_len: int | None
    exact_counts: bool  # prompt lengths from the server's /tokenize, not estimated
    warmup_errors: int
    conversations: list[Conversation]
    wall_seconds: float  # first turn sent to last answer
    prefix_cache: HitRate | None  # None: the server exposes no prefix cache counters
    check: CrossCheck | None  # the /metrics cross-check of every turn; None: not gpt2-serve

    @property
    def results(self) -> list[RequestResult]:
        return [r for c in self.conversations for r in c.turns]

    def turn(self, index: int) -> list[RequestResult]:
        """Every conversation's turn `index` (0-based), of those that got that far."""
        return [c.turns[index] for c in self.conversations if len(c.turns) > index]


async def context_window(client: httpx.AsyncClient, base_url: str) -> int | None:
    """max_model_len of the first model of GET /v1/models (gpt2-serve and vLLM say it)."""
    try:
        response = await client.get(base_url + "/v1/models")
        data = response.json().get("data") if response.status_code == 200 else None
        value = data[0].get("max_model_len") if data else None
    except (httpx.HTTPError, ValueError, AttributeError, IndexError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def make_chat_client(
    target: Target, timeout: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """As runner.make_client: no connection cap (a pool limit would queue turns inside the
    client and count the wait as server latency), no proxies from the environment."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        trust_env=False,
        transport=transport,
    )


async def run_chat(
    target: Target, settings: ChatSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> ChatResult:
    base = target.url.rstrip("/")
    url = base + "/v1/completions"
    async with make_chat_client(target, settings.timeout, transport) as client:
        model = target.model or await served_model(client, base)
        limit = settings.max_model_len or await context_window(client, base)
        counter = PromptCounter(client, base, model)

        async def send(prompt: str, prompt_len: int | None) -> RequestResult:
            spec = RequestSpec(prompt, prompt_len, settings.output_len)
            payload = completion_payload(
                spec, model, ignore_eos=settings.ignore_eos, temperature=settings.temperature
            )
            result = await stream_completion(client, url, payload, timeout=settings.timeout)
            result.requested_prompt_len = prompt_len
            return result

        async def converse(messages: list[str]) -> Conversation:
            conversation = Conversation()
            prompt, known = system_prompt(settings), None
            for index, message in enumerate(messages):
                new_text = ("\n" if index else "") + message
                prompt += new_text
                tokens = await counter.count(prompt, known, new_text)
                if limit is not None and tokens + settings.output_len > limit:
                    conversation.stopped_before = index + 1
                    conversation.stop_detail = (
                        f"{tokens} prompt tokens + {settings.output_len} max_tokens > "
                        f"max_model_len {limit}"
                    )
                    break
                result = await send(prompt, tokens if counter.exact else None)
                conversation.turns.append(result)
                if not result.ok:
                    break
                prompt += result.text
                if result.usage_reported and result.prompt_tokens is not None:
                    known = result.prompt_tokens + result.output_tokens
                else:
                    known = None
            return conversation

        rng = random.Random(f"{settings.seed}/chat-warmup")
        warm = [
            await send(text_prompt(settings.user_len, rng), None) for _ in range(settings.warmup)
        ]
        before = await scrape(client, base) if settings.metrics_check else None
        if before is not None:  # the warm-up must be counted before the run's first scrape
            before = await scrape_settled(client, base, before, sum(r.ok for r in warm))
        counters_before = await scrape_counters(client, base)

        start = time.perf_counter()
        conversations = list(await asyncio.gather(*(converse(m) for m in user_messages(settings))))
        wall = time.perf_counter() - start

        results = [r for c in conversations for r in c.turns]
        check = None
        if before is not None:
            after = await scrape_settled(client, base, before, sum(r.ok for r in results))
            if after is not None:
                check = cross_check(before, after, results, settings.tolerance)
        counters_after = await scrape_counters(client, base)
    return ChatResult(
        target=target,
        model=model,
        settings=settings,
        max_model_len=limit,
        exact_counts=bool(counter.exact),
        warmup_errors=sum(not r.ok for r in warm),
        conversations=conversations,
        wall_seconds=wall,
        prefix_cache=hit_rate(counters_before, counters_after),
        check=check,
    )
