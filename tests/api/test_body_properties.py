"""Random request bodies (hypothesis), valid and not, through the real routes, the real
validation and output processing over the scripted worker: every body is either served (200)
or refused with an envelope naming the field (400 on the OpenAI routes, 422 on TGI's), never a
5xx; and every request served has ended in the engine (nothing left in flight, admission back
to zero)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
TEXT = st.text(alphabet="ab c\n.é☕😀{}", max_size=12)
TOKEN_IDS = st.lists(st.integers(-2, 260), max_size=6)


def _number(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Values in a range, its edges often, and a little beyond it."""
    span = hi - lo
    return st.one_of(st.sampled_from([lo, hi]), st.floats(lo - span / 8, hi + span / 8))


VALID_IDS = st.lists(st.integers(0, 256), max_size=6)
SAMPLING: dict[str, st.SearchStrategy[Any]] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_k": st.integers(-2, 300),
    "min_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "repetition_penalty": _number(0, 10),
    "seed": st.integers(-1, 2**63),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=5), st.none()),
    "stop_token_ids": st.lists(st.integers(0, 257), max_size=3),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 30),
    "logit_bias": st.dictionaries(
        st.integers(0, 258).map(str), st.floats(-110, 110, allow_nan=False), max_size=2
    ),
    "timeout": st.floats(0, 5, allow_nan=False),
    "n": st.integers(1, 3),
    "stream": st.booleans(),
    "max_tokens": st.one_of(st.integers(1, 70), st.none()),
}
COMPLETION = {
    **SAMPLING,
    "prompt": st.one_of(
        TEXT, st.lists(TEXT, max_size=3), VALID_IDS, st.lists(VALID_IDS, max_size=2)
    ),
    "echo": st.booleans(),
    "logprobs": st.integers(0, 6),
    "prompt_logprobs": st.integers(0, 21),
}
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": TEXT}
)
CHAT = {
    **SAMPLING,
    "messages": st.lists(MESSAGE, min_size=1, max_size=3),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 21),
    "max_completion_tokens": st.one_of(st.integers(1, 70), st.none()),
}
TGI_PARAMETERS = {
    "max_new_tokens": st.one_of(st.integers(1, 70), st.none()),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_k": st.integers(-1, 300),
    "repetition_penalty": _number(0, 10),
    "do_sample": st.booleans(),
    "seed": st.integers(-1, 2**63),
    "stop": st.lists(TEXT, max_size=5),
    "details": st.booleans(),
    "decoder_input_details": st.booleans(),
    "top_n_tokens": st.integers(0, 6),
    "return_full_text": st.booleans(),
    "truncate": st.integers(0, 20),
}
TGI = {"inputs": TEXT, "parameters": st.fixed_dictionaries({}, optional=TGI_PARAMETERS)}


@st.composite
def _bodies(
    draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], required: str
) -> dict[str, Any]:
    """A body of values of the right kind (mostly in range); half the time one field, or one
    more field, gets a value of any kind."""
    optional = {k: v for k, v in fields.items() if k != required}
    body = draw(st.fixed_dictionaries({required: fields[required]}, optional=optional))
    if draw(st.booleans()):
        name = draw(st.sampled_from([*sorted(fields), "unknown_field"]))
        body[name] = draw(JUNK)
    return body


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, FakeEngineClient]]:
    fake = FakeEngineClient(max_model_len=64)
    with TestClient(create_app(Settings(model="fake-gpt2"), fake)) as client:
        yield client, fake


def _check(client: TestClient, fake: FakeEngineClient, path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body)  # NaN and Infinity as a lax client sends them
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    bad_input = 400 if path.startswith("/v1/") else 422
    assert r.status_code in (200, bad_input), (r.status_code, r.text)
    event(f"{r.status_code} {r.json()['error']['param'] if r.status_code != 200 else ''}")
    if r.status_code == bad_input:
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        param = error["param"]
        assert isinstance(param, str) and param, error
        if error["code"] == "context_length_exceeded":  # OpenAI's wording, which names both
            assert error["message"].startswith("This model's maximum context length is"), error
        elif error["message"].startswith("`inputs`"):  # TGI's wording of the same
            assert param in ("inputs", "parameters.max_new_tokens"), error
        elif error["message"].startswith("Unrecognized request argument"):
            assert error["message"].endswith(param), error
        else:
            assert error["code"] == bad_input, error
            assert error["message"].startswith(f"{param}: "), error
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n") or path != "/v1/completions"
        assert '"error"' not in r.text
    # Whatever happened, nothing is left running or counted in.
    assert fake.num_in_flight == 0 and fake.worker_running == set()
    assert (fake.admission.in_flight, fake.admission.queued_tokens) == (0, 0)


PROPERTY = settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(body=_bodies(COMPLETION, "prompt"))
def test_any_completion_body_is_served_or_refused_naming_a_field(
    served: tuple[TestClient, FakeEngineClient], body: dict[str, Any]
) -> None:
    _check(*served, "/v1/completions", body)


@PROPERTY
@given(body=_bodies(CHAT, "messages"))
def test_any_chat_body_is_served_or_refused_naming_a_field(
    served: tuple[TestClient, FakeEngineClient], body: dict[str, Any]
) -> None:
    _check(*served, "/v1/chat/completions", body)


@PROPERTY
@given(body=_bodies(TGI, "inputs"), stream=st.booleans())
def test_any_tgi_body_is_served_or_refused_naming_a_field(
    served: tuple[TestClient, FakeEngineClient], body: dict[str, Any], stream: bool
) -> None:
    path = "/generate_stream" if stream else "/generate"
    _check(*served, path, body)
