"""The official clients, unchanged, against a real HTTP server (uvicorn) over the fake engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient
from tests.api.live_server import running


@pytest.fixture
def base_url(fake: FakeEngineClient) -> Iterator[str]:
    app = create_app(Settings(model="fake-gpt2", keep_alive_seconds=1.0), fake)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    with running(server) as port:
        yield f"http://127.0.0.1:{port}"


def test_huggingface_hub_text_generation(base_url: str) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=base_url)
    assert client.text_generation("Hi", max_new_tokens=3, return_full_text=False) == " th"
    assert client.text_generation("Hi", max_new_tokens=3, return_full_text=True) == "Hi th"
    out = client.text_generation("Hi", max_new_tokens=3, details=True, return_full_text=False)
    assert out.generated_text == " th"
    assert out.details is not None
    assert out.details.finish_reason == "length"
    assert [t.text for t in out.details.tokens] == [" ", "t", "h"]


def test_huggingface_hub_stream_with_details(base_url: str) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=base_url)
    events = list(
        client.text_generation(
            "Hi", max_new_tokens=50, stream=True, details=True, return_full_text=False
        )
    )
    assert "".join(e.token.text for e in events) == " the quick brown fox"
    assert events[-1].generated_text == " the quick brown fox"
    assert events[-1].details is not None
    assert events[-1].details.finish_reason == "eos_token"
    assert events[-1].details.generated_tokens == len(" the quick brown fox") + 1
    tokens = list(client.text_generation("Hi", max_new_tokens=2, stream=True))
    assert tokens == [" ", "t"]


def test_huggingface_hub_text_generation_defaults_are_tgis(base_url: str) -> None:
    """The client posts to the base URL (TGI's POST /) and leaves return_full_text unset. TGI
    then answers as the transformers pipeline does for a text-generation model: the prompt and
    the completion; a stream's tokens are the new ones only, and its last event's
    generated_text is the full text. /generate defaults to the completion alone."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=base_url)
    assert client.text_generation("Hi", max_new_tokens=3) == "Hi th"
    assert list(client.text_generation("Hi", max_new_tokens=3, stream=True)) == [" ", "t", "h"]
    events = list(client.text_generation("Hi", max_new_tokens=3, stream=True, details=True))
    assert events[-1].generated_text == "Hi th"
    details = client.text_generation("Hi", max_new_tokens=3, details=True)
    assert details.generated_text == "Hi th"
    generate = InferenceClient(model=f"{base_url}/generate")
    assert generate.text_generation("Hi", max_new_tokens=3) == " th"


def test_huggingface_hub_chat_completion(base_url: str) -> None:
    """Given a URL, the client sends "model": "dummy", TGI's placeholder for "the model"."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=base_url)
    messages = [{"role": "user", "content": "Hi"}]
    out = client.chat_completion(messages, max_tokens=3)
    assert out.choices[0].message.content == " th"
    assert out.model == "fake-gpt2"
    assert out.usage.completion_tokens == 3
    chunks = list(client.chat_completion(messages, max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " th"
    assert chunks[-1].choices[0].finish_reason == "length"
    chunks = list(
        client.chat_completion(
            messages, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 19 + 2


def test_huggingface_hub_chat_completion_errors(base_url: str) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import BadRequestError

    client = InferenceClient(base_url=base_url)
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(BadRequestError, match="This model's maximum context length is 128"):
        client.chat_completion(messages, max_tokens=500)
    with pytest.raises(BadRequestError, match="Unrecognized request argument supplied: foo"):
        client.chat_completion(messages, max_tokens=2, extra_body={"foo": 1})


def test_huggingface_hub_errors_are_typed(base_url: str, fake: FakeEngineClient) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import OverloadedError, ValidationError

    client = InferenceClient(model=base_url)
    with pytest.raises(ValidationError, match="at most 4 items"):
        client.text_generation("Hi", stop=["a", "b", "c", "d", "e"])
    fake.overloaded = True
    with pytest.raises(OverloadedError, match="the limit is 260"):
        client.text_generation("Hi", max_new_tokens=2)


def test_openai_client(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    completion = client.completions.create(model="fake-gpt2", prompt="Hi", max_tokens=3)
    assert completion.choices[0].text == " th"
    assert completion.usage is not None and completion.usage.total_tokens == 5
    stream = client.completions.create(
        model="fake-gpt2",
        prompt="Hi",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " th"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    chat = client.chat.completions.create(
        model="fake-gpt2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert chat.choices[0].message.content == " t"
    chat_stream = client.chat.completions.create(
        model="fake-gpt2",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chat_stream) == " t"


def test_openai_client_errors(base_url: str) -> None:
    """OpenAI's statuses and codes, as the client raises them: 400 for bad input (not 422),
    404 model_not_found, 400 context_length_exceeded, and an unknown field named."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="less than or equal to 2") as bad:
        client.completions.create(model="fake-gpt2", prompt="Hi", temperature=3)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="Hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128") as over:
        client.chat.completions.create(
            model="fake-gpt2", messages=[{"role": "user", "content": "Hi"}], max_tokens=500
        )
    assert over.value.code == "context_length_exceeded"
    with pytest.raises(
        openai.BadRequestError, match="Unrecognized request argument supplied: max_token"
    ):
        client.completions.create(model="fake-gpt2", prompt="Hi", extra_body={"max_token": 4})
    # Documented OpenAI fields this server does not implement are accepted.
    chat = client.chat.completions.create(
        model="fake-gpt2",
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=2,
        store=False,
        metadata={"k": "v"},
        service_tier="auto",
        parallel_tool_calls=False,
    )
    assert chat.choices[0].message.content == " t"
