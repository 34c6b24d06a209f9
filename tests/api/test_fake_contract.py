"""The API tests' fake is an EngineClient as AsyncEngine is: the same members with the same
signatures (the Protocol is not runtime-checkable, so this compares them), and it runs the real
validation, admission and output processing rather than its own."""

from __future__ import annotations

import inspect

import pytest

from app.engine.client.admission import AdmissionControl
from app.engine.client.async_engine import AsyncEngine
from app.engine.client.output_processor import OutputProcessor
from app.engine.engine_client import EngineClient
from tests.api import fakes
from tests.api.fakes import FakeEngineClient

MEMBERS = sorted(name for name in vars(EngineClient) if not name.startswith("_") and name != "mro")


def _parameters(function: object) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


def test_the_protocol_has_members() -> None:
    assert {"generate", "info", "begin_drain", "wait_drained", "shutdown"} <= set(MEMBERS)


@pytest.mark.parametrize("cls", [FakeEngineClient, AsyncEngine], ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", MEMBERS)
def test_each_member_of_engine_client_is_implemented_alike(cls: type, name: str) -> None:
    want = getattr(EngineClient, name)
    fake = FakeEngineClient()
    assert hasattr(fake if cls is FakeEngineClient else cls, name), name
    if isinstance(want, property) or not callable(want):
        return  # a value: a property, or (the fake) an attribute
    got = getattr(cls, name)
    assert _parameters(got) == _parameters(want), name  # a default may be added
    assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), name
    assert inspect.isasyncgenfunction(got) or not inspect.isasyncgenfunction(want), name


def test_the_fake_uses_the_real_client_side_pieces() -> None:
    fake = FakeEngineClient()
    assert type(fake.outputs) is OutputProcessor
    assert type(fake.admission) is AdmissionControl
    assert fakes.validate_request.__module__ == "app.engine.client.validation"
