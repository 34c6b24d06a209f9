"""The multi-turn chat workload against a fake server with a prefix cache
(tests/bench/fake_chat.py), under virtual time (tests/bench/virtual_time.py): every latency is
what the fake's model implies, exactly, and the run costs no real time."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from transformers import GPT2TokenizerFast

from app.bench.chat import ChatResult, ChatSettings, run_chat, system_prompt, user_messages
from app.bench.chat_report import chat_json, render_chat, turn_stats
from app.bench.cli import build_parser, chat_settings_from, main
from app.bench.prefix_cache import HitRate, PrefixCounters, hit_rate, parse_counters
from app.bench.runner import Target
from app.bench.workload import WorkloadError
from tests.bench.fake_chat import FakeChatServer, Served
from tests.bench.virtual_time import VirtualClock
from tests.checkpoints import write_tokenizer

TARGET = Target("fake", "http://fake.test")
SMALL = ChatSettings(
    conversations=3, turns=3, system_prompt_len=5, user_len=4, output_len=3, warmup=2
)


def _run(clock: VirtualClock, fake: FakeChatServer, settings: ChatSettings = SMALL) -> ChatResult:
    return clock.run(run_chat(TARGET, settings, transport=fake.transport()))


def _measured(fake: FakeChatServer, settings: ChatSettings) -> list[Served]:
    return fake.served[settings.warmup :]


def _served_turns(result: ChatResult, fake: FakeChatServer) -> list[list[Served]]:
    """The fake's record of each turn of each conversation, found by its (unique) answer."""
    by_answer = {s.answer: s for s in fake.served}
    return [[by_answer[r.text] for r in c.turns] for c in result.conversations]


def test_each_turn_resends_the_conversation_and_the_actual_answer(clock: VirtualClock) -> None:
    fake = FakeChatServer()
    result = _run(clock, fake)
    measured = _measured(fake, SMALL)
    assert len(measured) == 9 and all(c.stopped_before is None for c in result.conversations)
    messages = user_messages(SMALL)
    system = system_prompt(SMALL)
    assert system == "system: it was the best of\n"
    for served, own in zip(_served_turns(result, fake), messages, strict=True):
        assert served[0].prompt == system + own[0]
        for previous, turn, message in zip(served, served[1:], own[1:], strict=False):
            # the previous prompt, the answer the server actually gave, the new message
            assert turn.prompt == previous.prompt + previous.answer + "\n" + message
    # conversations open with different user messages, each of --chat-user-len words
    assert len({m[0] for m in messages}) == 3
    assert all(len(m.split()) == 1 + 4 + 1 for ms in messages for m in ms)  # user: ... assistant:


def test_turns_are_sequential_and_conversations_concurrent(clock: VirtualClock) -> None:
    fake = FakeChatServer(ttft_per_uncached_token=0.0, fixed_ttft=0.1, gap=0.01)
    settings = ChatSettings(conversations=4, turns=3, user_len=4, output_len=3, warmup=0)
    result = _run(clock, fake, settings)
    assert fake.max_open_streams == 4  # all conversations at once, never two turns of one
    for conversation in result.conversations:
        sent = [r.send_time for r in conversation.turns]
        ended = [r.end_time for r in conversation.turns]
        assert all(e is not None for e in ended)
        # each turn starts only after the previous one's answer ended
        assert all(s >= e for s, e in zip(sent[1:], ended[:-1], strict=True))  # type: ignore[operator]
    # every turn takes 0.1 + 2 x 0.01 s and they run back to back: three rounds in all
    assert result.wall_seconds == pytest.approx(3 * 0.12, abs=1e-9)
    assert [r.send_time for c in result.conversations for r in c.turns[:1]] == [0.0] * 4


def test_ttft_by_turn_and_hit_rate_from_the_counters_increase(clock: VirtualClock) -> None:
    fake = FakeChatServer(ttft_per_uncached_token=0.01, gap=0.001)
    result = _run(clock, fake)
    measured = _measured(fake, SMALL)
    # The warm-up and earlier traffic moved the counters too: only the run's increase counts.
    assert result.prefix_cache == HitRate(
        hits=sum(s.hits for s in measured), queries=sum(s.tokens for s in measured)
    )
    assert fake.hits_total > result.prefix_cache.hits
    assert result.prefix_cache.hits > 0
    # TTFT of each turn index: what the fake took for that turn's uncached words
    turns = turn_stats(result)
    served = _served_turns(result, fake)
    for index, stats in enumerate(turns):
        expected = statistics.median(turns_of[index].ttft for turns_of in served)
        assert stats.ttft.p50 == pytest.approx(expected, abs=1e-9)
    # a later turn hits its whole previous turn: its TTFT is only the new message's
    assert turns[1].ttft.p50 == pytest.approx(0.01 * (1 + 4 + 1), abs=1e-9)
    text = render_chat("gpt2-serve bench --chat", [result])
    rate = result.prefix_cache.rate
    assert f"prefix cache hit rate: {rate:.1%} ({result.prefix_cache.hits:,} of" in text
    assert "server metrics n/a" in text  # the fake has no gpt2 histograms
    doc = json.loads(json.dumps(chat_json("cmd", [result])))
    (target,) = doc["targets"]
    assert target["prefix_cache"] == {
        "hits": result.prefix_cache.hits,
        "queries": result.prefix_cache.queries,
        "hit_rate": pytest.approx(rate),
    }
    assert [t["turn"] for t in target["turns"]] == [1, 2, 3]
    assert target["turns"][1]["stats"]["ttft"]["p50"] == pytest.approx(turns[1].ttft.p50)
    assert [len(c["turns"]) for c in target["conversations"]] == [3, 3, 3]


def test_a_server_without_prefix_cache_metrics_reads_n_a(clock: VirtualClock) -> None:
    result = _run(clock, FakeChatServer(metrics=False))
    assert result.prefix_cache is None
    text = render_chat("cmd", [result])
    assert "prefix cache hit rate: n/a (server exposes no prefix cache metrics)" in text
    prefix = chat_json("cmd", [result])["targets"][0]["prefix_cache"]
    assert prefix["hit_rate"] is None
    assert prefix["note"] == "n/a (server exposes no prefix cache metrics)"


def test_conversations_stop_before_a_turn_that_would_not_fit(clock: VirtualClock) -> None:
    # Words per turn: 6 of message + 3 of answer; turn 3's prompt is 24 words, 24 + 3 fits
    # in 30, turn 4's (33) does not.
    fake = FakeChatServer(max_model_len=30)
    settings = ChatSettings(conversations=3, turns=5, user_len=4, output_len=3, warmup=0)
    result = _run(clock, fake, settings)
    assert [len(c.turns) for c in result.conversations] == [3, 3, 3]
    assert {c.stopped_before for c in result.conversations} == {4}
    assert all(s.tokens + s.max_tokens <= 30 for s in fake.served)
    assert max(s.tokens for s in fake.served) == 24
    assert result.max_model_len == 30 and result.exact_counts
    text = render_chat("cmd", [result])
    assert (
        "stopped at the context window: 3 of 3 conversations (3 before turn 4): "
        "e.g. 33 prompt tokens + 3 max_tokens > max_model_len 30"
    ) in text
    # --chat-max-model-len overrides what the server says
    smaller = ChatSettings(
        conversations=3, turns=5, user_len=4, output_len=3, warmup=0, max_model_len=20
    )
    capped = _run(clock, FakeChatServer(max_model_len=30), smaller)
    assert [len(c.turns) for c in capped.conversations] == [2, 2, 2]


def test_without_tokenize_the_count_is_estimated_from_usage(clock: VirtualClock) -> None:
    fake = FakeChatServer(max_model_len=30, tokenize=False)
    settings = ChatSettings(conversations=2, turns=5, user_len=4, output_len=3, warmup=0)
    result = _run(clock, fake, settings)
    assert not result.exact_counts
    assert all(s.tokens + s.max_tokens <= 30 for s in fake.served)
    assert all(c.stopped_before is not None for c in result.conversations)
    assert "(prompt lengths estimated: the server has no /tokenize)" in render_chat("c", [result])


def test_a_failed_turn_ends_its_conversation(clock: VirtualClock) -> None:
    result = _run(clock, FakeChatServer(fail_status=503))
    assert [[r.error for r in c.turns] for c in result.conversations] == [["http_503"]] * 3
    assert result.warmup_errors == 2
    (first,) = turn_stats(result)
    assert first.errors == {"http_503": 3}


def test_counters_parse_typed_untyped_and_labelled() -> None:
    typed = FakeChatServer().exposition()
    assert parse_counters(typed) == PrefixCounters(hits=1000.0, queries=4000.0)
    untyped = "gpt2_prefix_cache_hits_total 5\ngpt2_prefix_cache_queries_total 9\n"
    assert parse_counters(untyped) == PrefixCounters(hits=5.0, queries=9.0)
    labelled = (
        "# TYPE gpt2_prefix_cache_hits counter\n"
        'gpt2_prefix_cache_hits_total{pid="1"} 2\ngpt2_prefix_cache_hits_total{pid="2"} 3\n'
        "# TYPE gpt2_prefix_cache_queries counter\n"
        'gpt2_prefix_cache_queries_total{pid="1"} 10\n'
    )
    assert parse_counters(labelled) == PrefixCounters(hits=5.0, queries=10.0)
    assert parse_counters("gpt2_prefix_cache_hits_total 5\n") is None  # one of two is not enough
    assert hit_rate(PrefixCounters(10, 100), PrefixCounters(40, 160)) == HitRate(30, 60)
    assert hit_rate(None, PrefixCounters(1, 2)) is None
    assert HitRate(0, 0).describe() == "n/a (the server looked up no prompt tokens)"


def test_a_conversation_is_a_growing_prefix_in_gpt2_tokens(tmp_path: Path) -> None:
    """The previous prompt's tokens open the next prompt, whatever the answer looks like (as
    long as it does not start with punctuation that joins the ':' before it)."""
    write_tokenizer(tmp_path)
    tokenizer = GPT2TokenizerFast.from_pretrained(tmp_path)
    settings = ChatSettings(conversations=1, turns=2, system_prompt_len=20, user_len=8)
    first, second = user_messages(settings)[0]
    prompt = system_prompt(settings) + first
    for answer in (" it was the best", "s of times\n", "\n\nwisdom", " 1984 and 2 words "):
        following = prompt + answer + "\n" + second
        head = tokenizer.encode(prompt + answer.rstrip())
        assert tokenizer.encode(following)[: len(head)] == head, answer
    assert len(tokenizer.encode(system_prompt(settings))) == 2 + 20 + 1  # system : words \n


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "4"], "--concurrency does not apply to --chat"),
        (["--shared-prefix-len", "9"], "--shared-prefix-len does not apply to --chat"),
        (["--mixed"], "--mixed does not apply to --chat"),
        (["--processes", "2"], "--processes does not apply to --chat"),
        (["--chat-turns", "0"], "must be >= 1"),
    ],
)
def test_chat_flags_refuse_what_does_not_apply(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "http://127.0.0.1:9", "--chat", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_chat_flags_build_the_settings() -> None:
    args = build_parser().parse_args(
        ["--url", "http://a:1", "--chat", "--chat-conversations", "16", "--chat-turns", "4",
         "--chat-system-prompt-len", "200", "--chat-user-len", "32", "--output-len", "32",
         "--chat-max-model-len", "1024", "--ignore-eos", "--seed", "3"]
    )  # fmt: skip
    s = chat_settings_from(args)
    assert (s.conversations, s.turns, s.system_prompt_len, s.user_len, s.output_len) == (
        16, 4, 200, 32, 32,
    )  # fmt: skip
    assert s.max_model_len == 1024 and s.ignore_eos and s.seed == 3
    with pytest.raises(WorkloadError, match="user_len"):
        ChatSettings(user_len=0)
