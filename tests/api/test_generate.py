from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import sse_events
from tests.api.fakes import EOS, FakeEngineClient

# What huggingface_hub's InferenceClient.text_generation posts: every parameter, mostly null.
HF_PARAMETERS = {
    "adapter_id": None,
    "best_of": None,
    "decoder_input_details": False,
    "details": True,
    "do_sample": False,
    "frequency_penalty": None,
    "grammar": None,
    "max_new_tokens": 3,
    "repetition_penalty": None,
    "return_full_text": None,
    "seed": None,
    "stop": [],
    "temperature": None,
    "top_k": None,
    "top_n_tokens": None,
    "top_p": None,
    "truncate": None,
    "typical_p": None,
    "watermark": False,
}


def test_generate_plain(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}})
    assert r.status_code == 200
    assert r.json() == {"generated_text": " th"}
    assert fake.calls[0].params.temperature == 0.0  # TGI: greedy unless asked to sample
    assert fake.calls[0].params.logprobs is None


def test_generate_default_max_new_tokens_fits_the_context(
    client: TestClient, fake: FakeEngineClient
) -> None:
    client.post("/generate", json={"inputs": "Hi"})
    client.post("/generate", json={"inputs": "x" * 100})
    assert [c.params.max_tokens for c in fake.calls] == [100, 28]


def test_generate_details(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/generate",
        json={
            "inputs": "Hi",
            "parameters": {
                "max_new_tokens": 2,
                "details": True,
                "decoder_input_details": True,
                "top_n_tokens": 2,
                "seed": 3,
                "do_sample": True,
            },
        },
    )
    details = r.json()["details"]
    assert r.json()["generated_text"] == "<3"
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 2
    assert details["input_length"] == 2
    assert details["seed"] == 3
    assert fake.calls[0].params.prompt_logprobs == 0
    assert details["prefill"] == [
        {"id": 72, "text": "H", "logprob": None},  # nothing predicts the first token
        {"id": 105, "text": "i", "logprob": -0.25},
    ]
    assert details["tokens"] == [
        {"id": 60, "text": "<", "logprob": -0.5, "special": False},
        {"id": 51, "text": "3", "logprob": -0.5, "special": False},
    ]
    assert details["top_tokens"][0] == [
        {"id": 60, "text": "<", "logprob": -0.5, "special": False},
        {"id": 61, "text": "=", "logprob": -1.5, "special": False},
    ]
    assert set(details["timings"]) == {
        "queue_ms",
        "ttft_ms",
        "decode_ms",
        "total_ms",
        "mean_itl_ms",
        "max_itl_ms",
    }


def test_finish_reasons_in_tgi_words(client: TestClient) -> None:
    def finish(parameters: dict[str, object]) -> str:
        r = client.post(
            "/generate", json={"inputs": "Hi", "parameters": {**parameters, "details": True}}
        )
        return str(r.json()["details"]["finish_reason"])

    assert finish({"max_new_tokens": 2}) == "length"
    assert finish({"max_new_tokens": 50}) == "eos_token"
    assert finish({"max_new_tokens": 50, "stop": ["quick"]}) == "stop_sequence"


def test_stop_sequence_stays_in_text_as_in_tgi(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 50, "stop": ["quick"]}}
    )
    assert r.json()["generated_text"] == " the quick"
    assert fake.calls[0].params.include_stop_str_in_output is True


def test_eos_token_is_special(client: TestClient) -> None:
    r = client.post(
        "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 50, "details": True}}
    )
    last = r.json()["details"]["tokens"][-1]
    assert last == {"id": EOS, "text": "<|endoftext|>", "logprob": -0.5, "special": True}


def test_sampling_switch_follows_tgi(client: TestClient, fake: FakeEngineClient) -> None:
    for parameters in (
        {"do_sample": True},
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.9},
        {"temperature": 1.0},
        {},
    ):
        client.post("/generate", json={"inputs": "Hi", "parameters": parameters})
    temps = [c.params.temperature for c in fake.calls]
    assert temps == [1.0, 0.7, 1.0, 1.0, 0.0, 0.0]
    assert fake.calls[2].params.top_k == 5
    assert fake.calls[3].params.top_p == 0.9


def test_hf_client_body_with_nulls_is_accepted(client: TestClient) -> None:
    r = client.post("/", json={"inputs": "Hi", "parameters": HF_PARAMETERS, "stream": False})
    assert r.status_code == 200, r.text
    # POST / answers a list, and (as TGI for text-generation models) returns the full text.
    [answer] = r.json()
    assert answer["generated_text"] == "Hi th"
    assert answer["details"]["tokens"][0]["text"] == " "


def test_null_parameters_mean_defaults(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/generate", json={"inputs": "Hi", "parameters": None})
    assert r.status_code == 200
    assert fake.calls[0].params.max_tokens == 100


def test_return_full_text(client: TestClient) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "return_full_text": True}}
    assert client.post("/generate", json=body).json() == {"generated_text": "Hi "}
    body["parameters"]["return_full_text"] = False  # type: ignore[index]
    assert client.post("/", json=body).json() == [{"generated_text": " "}]


def test_truncate_keeps_last_tokens(client: TestClient, fake: FakeEngineClient) -> None:
    client.post("/generate", json={"inputs": "Hello", "parameters": {"truncate": 2}})
    assert fake.calls[0].prompt_ids == list(b"lo")


def test_unsupported_parameters_are_422(client: TestClient) -> None:
    for parameters, param in (
        ({"typical_p": 0.9}, "parameters.typical_p"),
        ({"watermark": True}, "parameters.watermark"),
        ({"watermark": 0}, "parameters.watermark"),
        ({"best_of": True}, "parameters.best_of"),
        ({"best_of": 2}, "parameters.best_of"),
        ({"grammar": {"type": "json", "value": {}}}, "parameters.grammar"),
        ({"temperature": 0}, "parameters.temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop"),
        ({"max_new_tokens": "5"}, "parameters.max_new_tokens"),
    ):
        r = client.post("/generate", json={"inputs": "Hi", "parameters": parameters})
        assert r.status_code == 422, parameters
        body = r.json()
        assert body["error"]["param"] == param, body
        assert body["error_type"] == "validation"


def test_generate_stream_events(client: TestClient) -> None:
    r = client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert "[DONE]" not in events  # TGI's native stream has no terminator
    assert [e["index"] for e in events] == [1, 2, 3]
    assert [e["token"] for e in events] == [
        {"id": 32, "text": " ", "logprob": -0.5, "special": False},
        {"id": 116, "text": "t", "logprob": -0.5, "special": False},
        {"id": 104, "text": "h", "logprob": -0.5, "special": False},
    ]
    assert [e["generated_text"] for e in events] == [None, None, " th"]
    assert events[0]["details"] is None
    details = events[-1]["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 3
    assert details["input_length"] == 2
    assert 0 <= details["timings"]["ttft_ms"] <= details["timings"]["total_ms"]


def test_stream_token_texts_add_up_across_utf8(client: TestClient, fake: FakeEngineClient) -> None:
    fake.script = " é"
    r = client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 9}})
    events = sse_events(r.text)
    texts = [e["token"]["text"] for e in events]
    assert texts == [" ", "", "é", ""]  # é is two byte-tokens; the last token is EOS
    assert "".join(texts) == events[-1]["generated_text"] == " é"
    assert events[-1]["details"]["finish_reason"] == "eos_token"


def test_compat_route_streams_when_asked(client: TestClient) -> None:
    r = client.post("/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}, "stream": True})
    events = sse_events(r.text)
    # return_full_text defaults to true on POST /, in the final text only.
    assert events[-1]["generated_text"] == "Hi t"
    assert [e["token"]["text"] for e in events] == [" ", "t"]


def test_info(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == "fake-gpt2"
    assert info["model_dtype"] == "float32"
    assert info["model_device_type"] == "cpu"
    assert info["max_total_tokens"] == 128
    assert info["max_input_tokens"] == 127
    assert info["max_best_of"] == 1
    assert info["max_stop_sequences"] == 4
    assert info["router"] == "gpt2-serve"
    assert isinstance(info["version"], str)
