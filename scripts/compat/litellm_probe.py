"""Runs inside litellm's own environment (not the project's): litellm's Python API against the
server, then one JSON object on the file named by --out. Imports nothing from the project.

Calls: text_completion and completion (chat), each non-streamed and streamed (with
stream_options.include_usage), through the "openai/" provider and once through
"hosted_vllm/"; then one chat call whose prompt + max_tokens overflow the context window, whose
exception is recorded (ContextWindowExceededError is what a router's context-window fallbacks
key on). Token totals come from the usage the server sent (a stream's last chunk); litellm is
never asked to count tokens itself.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
import litellm

PROMPT = "It is a truth universally acknowledged that"
MESSAGES = [{"role": "user", "content": "Tell me about the king."}]


def usage_of(response: Any) -> tuple[int, int] | None:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    return int(usage.prompt_tokens), int(usage.completion_tokens)


def streamed_usage(stream: Any) -> tuple[int, int] | None:
    """The usage the server put on the stream (its last chunk), or None when none came."""
    found = None
    for chunk in stream:
        found = usage_of(chunk) or found
    return found


def calls(args: argparse.Namespace) -> list[tuple[str, Any]]:
    common: dict[str, Any] = {
        "api_base": args.url + "/v1",
        "api_key": "compat",
        "max_tokens": args.max_tokens,
        "temperature": 0.7,
        "num_retries": 0,
        "timeout": 120,
    }
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    openai_model, vllm_model = f"openai/{args.model}", f"hosted_vllm/{args.model}"
    return [
        ("text_completion", lambda: litellm.text_completion(
            model=openai_model, prompt=PROMPT, **common)),
        ("text_completion stream", lambda: litellm.text_completion(
            model=openai_model, prompt=PROMPT, **common, **stream)),
        ("completion", lambda: litellm.completion(
            model=openai_model, messages=MESSAGES, **common)),
        ("completion stream", lambda: litellm.completion(
            model=openai_model, messages=MESSAGES, **common, **stream)),
        ("completion hosted_vllm", lambda: litellm.completion(
            model=vllm_model, messages=MESSAGES, **common)),
        ("completion hosted_vllm stream", lambda: litellm.completion(
            model=vllm_model, messages=MESSAGES, **common, **stream)),
    ]  # fmt: skip


def overflow(args: argparse.Namespace) -> dict[str, Any]:
    """A chat call asking for the whole context window as output: the server must refuse it."""
    try:
        litellm.completion(
            model=f"openai/{args.model}",
            messages=MESSAGES,
            api_base=args.url + "/v1",
            api_key="compat",
            max_tokens=args.context_window,
            num_retries=0,
            timeout=120,
        )
    except Exception as exc:
        return {
            "exception": type(exc).__name__,
            "bases": [f"{c.__module__}.{c.__name__}" for c in type(exc).__mro__[1:4]],
            "status": getattr(exc, "status_code", None),
            "message": str(exc)[:300],
            "is_context_window_error": isinstance(exc, litellm.ContextWindowExceededError),
        }
    return {"exception": None, "is_context_window_error": False, "message": "no error raised"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--context-window", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    litellm.telemetry = False

    results: list[dict[str, Any]] = []
    for name, call in calls(args):
        entry: dict[str, Any] = {"call": name}
        try:
            response = call()
            usage = streamed_usage(response) if "stream" in name else usage_of(response)
            if usage is None:
                entry["error"] = "no usage in the answer"
            else:
                entry["prompt_tokens"], entry["completion_tokens"] = usage
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        results.append(entry)
        print(json.dumps(entry), flush=True)

    report = {"version": _version(), "calls": results, "overflow": overflow(args)}
    print(json.dumps(report["overflow"]), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


def _version() -> str:
    from importlib.metadata import version

    return version("litellm")


if __name__ == "__main__":
    main()
