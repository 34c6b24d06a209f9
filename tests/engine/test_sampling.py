"""Sampling through the engine: seeds, filters, penalties, stop conditions and logprobs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel

from app.engine import SamplingParams
from app.engine.worker.llm import LLM

PROMPT = "The meaning of life is"


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Any) -> LLM:
    from app.engine import EngineConfig

    return LLM(EngineConfig(model=str(tiny_model_dir), device="cpu", max_num_seqs=16))


def _run(llm: LLM, params: SamplingParams, prompt: str = PROMPT) -> list[int]:
    return llm.generate([prompt], params)[0].token_ids


def test_seeded_sampling_is_reproducible_and_independent_of_batch(llm: LLM) -> None:
    seeded = SamplingParams(max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True)
    alone = _run(llm, seeded)
    assert _run(llm, seeded) == alone
    companions = [SamplingParams(max_tokens=n, temperature=0.9) for n in (3, 30, 11)]
    prompts = ["Other text", PROMPT, "x", "A much longer companion prompt, to shift positions"]
    results = llm.generate(prompts, [companions[0], seeded, companions[1], companions[2]])
    assert results[1].token_ids == alone
    assert _run(llm, SamplingParams(max_tokens=24, seed=4321, ignore_eos=True)) != alone


def test_a_seeded_request_draws_afresh_at_each_position(llm: LLM) -> None:
    """At temperature 100 the tiny model's distribution is nearly flat, so 24 seeded draws
    spread over the vocabulary. Seeding each position with the seed alone would draw the same
    uniform every time: every token would sit at the same quantile (one narrow band)."""
    params = SamplingParams(max_tokens=24, temperature=100.0, seed=1234, ignore_eos=True)
    tokens = _run(llm, params)
    assert len(set(tokens)) >= 20
    assert max(tokens) - min(tokens) > 25_000


def test_unseeded_sampling_varies(llm: LLM) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True)
    assert len({tuple(_run(llm, params)) for _ in range(4)}) > 1


def test_top_k_1_and_tiny_top_p_equal_greedy(llm: LLM) -> None:
    greedy = _run(llm, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    top_k = _run(llm, SamplingParams(max_tokens=20, temperature=1.5, top_k=1, ignore_eos=True))
    top_p = _run(llm, SamplingParams(max_tokens=20, temperature=1.5, top_p=1e-6, ignore_eos=True))
    min_p = _run(llm, SamplingParams(max_tokens=20, temperature=1.5, min_p=1.0, ignore_eos=True))
    assert greedy == top_k == top_p == min_p


def test_temperature_spreads_the_distribution(llm: LLM) -> None:
    def distinct_first_tokens(temperature: float) -> int:
        params = [SamplingParams(max_tokens=1, temperature=temperature, seed=s) for s in range(40)]
        return len({c.token_ids[0] for c in llm.generate([PROMPT] * 40, params)})

    cold, warm = distinct_first_tokens(0.05), distinct_first_tokens(3.0)
    assert cold <= 3
    assert warm > 2 * cold


def test_top_k_restricts_choices_to_the_k_most_likely(llm: LLM, hf_model: GPT2LMHeadModel) -> None:
    ids = llm.encode(PROMPT)
    with torch.inference_mode():
        top5 = set(hf_model(torch.tensor([ids])).logits[0, -1].topk(5).indices.tolist())
    params = [SamplingParams(max_tokens=1, temperature=5.0, top_k=5, seed=s) for s in range(40)]
    firsts = {c.token_ids[0] for c in llm.generate([ids] * 40, params)}
    assert firsts <= top5
    assert len(firsts) >= 3


def test_logprobs_match_transformers(llm: LLM, hf_model: GPT2LMHeadModel) -> None:
    ids = llm.encode(PROMPT)
    (c,) = llm.generate(
        [ids], SamplingParams(max_tokens=4, temperature=0.0, logprobs=3, ignore_eos=True)
    )
    with torch.inference_mode():
        logits = hf_model(torch.tensor([ids + c.token_ids])).logits[0, len(ids) - 1 : -1]
    expected = logits.log_softmax(-1)
    assert len(c.logprobs) == 4
    for step, lp in enumerate(c.logprobs):
        assert lp.token_id == c.token_ids[step]
        assert lp.logprob == pytest.approx(float(expected[step, lp.token_id]), abs=1e-3)
        top_vals, top_ids = expected[step].topk(3)
        assert [t for t, _ in lp.top] == top_ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top_vals.tolist(), abs=1e-3)


def test_stop_token_ids_min_tokens_and_ignore_eos(llm: LLM) -> None:
    greedy = _run(llm, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    stop_at = greedy[5]
    first = greedy.index(stop_at)
    stopped = _run(llm, SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(stop_at,)))
    assert stopped == greedy[: first + 1]
    # min_tokens masks the stop token until enough tokens exist, so output differs from `stopped`.
    held = llm.generate(
        [PROMPT],
        SamplingParams(max_tokens=12, temperature=0.0, min_tokens=8, stop_token_ids=(stop_at,)),
    )[0]
    assert len(held.token_ids) >= 8
    assert stop_at not in held.token_ids[:8]


def test_logit_bias_forces_a_token(llm: LLM) -> None:
    out = _run(
        llm, SamplingParams(max_tokens=5, temperature=1.0, logit_bias={42: 100.0}, ignore_eos=True)
    )
    assert out == [42] * 5


def test_eos_ends_unless_ignored(llm: LLM) -> None:
    eos = llm.core.eos_token_id
    bias = {eos: 100.0}
    (c,) = llm.generate([PROMPT], SamplingParams(max_tokens=5, temperature=0.0, logit_bias=bias))
    assert (c.token_ids, c.finish_reason) == ([eos], "stop")
    (c,) = llm.generate(
        [PROMPT], SamplingParams(max_tokens=5, temperature=0.0, logit_bias=bias, ignore_eos=True)
    )
    assert (c.token_ids, c.finish_reason) == ([eos] * 5, "length")
    (c,) = llm.generate(
        [PROMPT], SamplingParams(max_tokens=5, temperature=0.0, logit_bias=bias, min_tokens=3)
    )
    assert eos not in c.token_ids[:3] and c.token_ids[3] == eos and c.finish_reason == "stop"


def test_penalties_discourage_repetition(llm: LLM) -> None:
    def repeats(params: SamplingParams) -> int:
        out = _run(llm, params)
        return len(out) - len(set(out))

    base = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True}
    plain = repeats(SamplingParams(**base))  # type: ignore[arg-type]
    assert plain > 0, "the tiny model should repeat itself greedily; pick another prompt"
    assert repeats(SamplingParams(repetition_penalty=10.0, **base)) < plain  # type: ignore[arg-type]
    assert repeats(SamplingParams(frequency_penalty=2.0, **base)) < plain  # type: ignore[arg-type]
    assert repeats(SamplingParams(presence_penalty=2.0, **base)) < plain  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["inverse_cdf", "exponential_race"])
def test_draws_follow_the_distribution(method: str) -> None:
    """Both samplers (CPU: inverse CDF; CUDA: exponential race) draw from probs exactly:
    frequencies within 4 standard errors, zero-probability tokens never drawn."""
    from app.engine.worker import sampler

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05, 0.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    if method == "inverse_cdf":
        draws = sampler.inverse_cdf(probs, torch.rand(4000, 1, generator=g))
    else:
        draws = sampler.exponential_race(probs, torch.empty_like(probs).exponential_(generator=g))
    freq = torch.bincount(draws, minlength=6).double() / 4000
    expected = probs[0].double()
    stderr = (expected * (1 - expected) / 4000).sqrt()
    assert (freq[[1, 5]] == 0).all()
    assert ((freq - expected).abs() <= 4 * stderr + 1e-9).all(), freq.tolist()


@pytest.mark.parametrize("rows", [1, 32])
def test_row_argmax_is_torch_argmax(rows: int) -> None:
    """Greedy picks through numpy on CPU: the same index as torch.argmax, the first on ties,
    masked (-inf) entries never, and a non-contiguous view takes torch's own path."""
    from app.engine.worker.sampler import row_argmax

    logits = torch.randn(rows, 50257, generator=torch.Generator().manual_seed(rows))
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie: the first one wins
    logits[-1, 100:1000] = float("-inf")
    picked = row_argmax(logits)
    assert picked.dtype == torch.long
    assert torch.equal(picked, logits.argmax(dim=-1))
    assert picked[0].item() == 7
    strided = logits[:, ::2]
    assert torch.equal(row_argmax(strided), strided.argmax(dim=-1))


def _sampler_rows(*params: SamplingParams) -> list[Any]:
    from app.engine.worker.sampler import SamplingRow

    return [SamplingRow(p, [0], 1) for p in params]


@pytest.mark.parametrize("temperature", [1e-38, 1e-20, 1e-6])
def test_any_accepted_temperature_gives_a_valid_draw(temperature: float) -> None:
    """Below a threshold (vLLM's 1e-5) temperature is greedy: float32 logits divided by 1e-38
    overflow to inf, and softmax of inf is NaN, which drew the last vocabulary id."""
    from app.engine.worker.sampler import Sampler

    sampler = Sampler(vocab_size=8, eos_token_id=7, device=torch.device("cpu"), seed=0)
    logits = torch.tensor([[5.0, 40.0, -10.0, 35.0, 0.0, 10.0, -20.0, 1.0]] * 4)
    params = SamplingParams(temperature=temperature, logprobs=2)
    chosen, logprobs = sampler(logits, _sampler_rows(*[params] * 4))
    assert chosen.tolist() == [1, 1, 1, 1]
    assert all(lp is not None and math.isfinite(lp.logprob) for lp in logprobs)


def test_nan_and_inf_logits_never_reach_the_draw(caplog: pytest.LogCaptureFixture) -> None:
    """A row with NaN logits: NaN is impossible, the rest is the distribution (the old code
    drew the NaN's index greedily and the last id when sampling); +inf tokens share the mass;
    a row with nothing finite ends the text. Each is logged, and logprobs stay finite."""
    from app.engine.worker.sampler import Sampler

    nan, inf = math.nan, math.inf
    sampler = Sampler(vocab_size=8, eos_token_id=7, device=torch.device("cpu"), seed=0)
    logits = torch.tensor(
        [
            [0.0, 50.0, nan, 0.0, 0.0, 0.0, 0.0, 0.0],  # greedy
            [0.0, 0.0, 0.0, 50.0, 0.0, nan, 0.0, 0.0],  # sampled
            [0.0, inf, 0.0, 0.0, inf, 0.0, 0.0, 0.0],  # sampled: 1 or 4
            [nan] * 8,  # nothing left: EOS
            [0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a sound row next to them
        ]
    )
    greedy, sampled = SamplingParams(temperature=0, logprobs=1), SamplingParams(logprobs=1)
    rows = _sampler_rows(greedy, sampled, sampled, sampled, greedy)
    with caplog.at_level("ERROR", logger="app.engine.worker.sampler"):
        chosen, logprobs = sampler(logits, rows)
    ids = chosen.tolist()
    assert ids[0] == 1 and ids[1] == 3 and ids[2] in (1, 4) and ids[3] == 7 and ids[4] == 2
    assert "4 of 5 rows had NaN or infinite logits" in caplog.text
    for lp in logprobs:
        assert lp is not None and math.isfinite(lp.logprob)
        assert all(math.isfinite(value) for _, value in lp.top)
    assert math.isnan(logits[0, 2])  # the caller's tensor is left as it was


def test_on_the_device_a_row_with_no_distribution_ends_its_text() -> None:
    """With checks on the device (CUDA; forced here), nothing waits on the host: a row with a
    NaN, a +inf or nothing finite gets EOS, flagged in last_invalid; sound rows are drawn as
    the host path draws them."""
    from app.engine.worker.sampler import Sampler

    nan, inf = math.nan, math.inf
    logits = torch.tensor(
        [
            [0.0, 50.0, nan, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, inf, 0.0, 0.0, inf, 0.0, 0.0, 0.0],
            [-inf] * 8,
            [0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.5, 0.0, 0.2, 0.0, 0.3, 0.0],
        ]
    )
    greedy, sampled = SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=3)
    rows = _sampler_rows(greedy, sampled, greedy, greedy, sampled)

    def sampler(on_device: bool) -> Sampler:
        s = Sampler(vocab_size=8, eos_token_id=7, device=torch.device("cpu"), seed=0)
        s.checks_on_device = on_device
        return s

    on_device = sampler(True)
    chosen, _ = on_device(logits, rows)
    assert chosen.tolist()[:3] == [7, 7, 7]
    assert on_device.last_invalid is not None
    assert on_device.last_invalid.tolist() == [True, True, True, False, False]
    host, _ = sampler(False)(logits, rows)
    assert chosen.tolist()[3:] == host.tolist()[3:]
    # A step that reports logprobs reads them on the host: rows are repaired as there.
    with_logprobs = _sampler_rows(*[SamplingParams(temperature=0, logprobs=1)] * 5)
    chosen, logprobs = on_device(logits, with_logprobs)
    assert on_device.last_invalid is None and chosen.tolist()[0] == 1
    assert all(lp is not None and math.isfinite(lp.logprob) for lp in logprobs)
