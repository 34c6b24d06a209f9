"""AdmissionControl's limits, for one API process and as one of several (--api-workers)."""

from __future__ import annotations

import pytest

from app.engine.client.admission import AdmissionControl
from app.engine.errors import OverloadedError


def _fill(admission: AdmissionControl, prompt_tokens: int = 1) -> int:
    admitted = 0
    while True:
        try:
            admission.admit(prompt_tokens)
        except OverloadedError as exc:
            assert exc.retry_after >= 1
            return admitted
        admitted += 1


def test_one_process_takes_the_whole_limit() -> None:
    admission = AdmissionControl(max_running=4, max_queued_requests=6, max_queued_tokens=1000)
    assert _fill(admission) == 10
    unchanged = r"the limit is 10 \(max_num_seqs \+ max_queued_requests\);"
    with pytest.raises(OverloadedError, match=unchanged):
        admission.admit(1)


def test_each_of_several_processes_takes_its_share_rounded_up() -> None:
    shares = [AdmissionControl(4, 6, 1000, processes=3) for _ in range(3)]
    assert [_fill(a) for a in shares] == [4, 4, 4]  # ceil(10 / 3): never less than the limit
    with pytest.raises(OverloadedError, match="this process's share over 3"):
        shares[0].admit(1)
    tokens = AdmissionControl(100, 0, 1000, processes=3)
    assert _fill(tokens, prompt_tokens=100) == 3  # ceil(1000 / 3) = 334 prompt tokens waiting
    with pytest.raises(OverloadedError, match=r"limit of 334 \(max_queued_tokens, this process"):
        tokens.admit(100)
