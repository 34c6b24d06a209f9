"""`gpt2-serve --help` and each command's: every flag says what it does, in a named section
derived from the field's metadata, and generate takes no server flag."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from app.bench.cli import build_parser as build_bench_parser
from app.cli import build_parser, main
from app.cli_flags import SETTING_GROUPS, setting_group
from app.config import BUNDLED_MODEL, Settings
from app.engine.config import EngineConfig

# argparse's own sections: a flag left there was put in no group.
UNGROUPED = {"options", "optional arguments", "positional arguments"}


def command_parser(command: str) -> argparse.ArgumentParser:
    if command == "bench":
        return build_bench_parser()
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]  # type: ignore[no-any-return]


def sections(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag (or positional) -> the title of the section --help lists it in."""
    found = {}
    for group in parser._action_groups:
        for action in group._group_actions:
            if not isinstance(action, argparse._HelpAction):
                found[action.option_strings[0] if action.option_strings else action.dest] = (
                    group.title or ""
                )
    return found


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["serve", "generate", "bench"])
def test_every_flag_has_help_and_a_section(command: str) -> None:
    parser = command_parser(command)
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help.strip(), action.option_strings or action.dest
    listed = sections(parser)
    assert listed
    assert {flag: title for flag, title in listed.items() if title in UNGROUPED} == {}


def test_serve_sections_come_from_the_fields_metadata() -> None:
    listed = sections(command_parser("serve"))
    assert set(listed.values()) == set(SETTING_GROUPS)
    for name, field in Settings.model_fields.items():
        assert listed["--" + name.replace("_", "-")] == setting_group(field), name
    # An engine field names its section in EngineConfig's metadata; "engine" when it does not.
    for f in dataclasses.fields(EngineConfig):
        expected = f.metadata.get("group", "engine")
        assert listed["--" + f.name.replace("_", "-")] == expected, f.name
    assert listed["--model"] == listed["--device"] == listed["--dtype"] == "model"
    assert listed["--max-num-seqs"] == "engine"
    assert listed["--port"] == listed["--api-key"] == "server"
    assert listed["--max-queued-requests"] == "limits"
    assert listed["--log-level"] == "observability"


def test_serve_help_shows_choices_variables_and_readable_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    text = help_text(["serve", "--help"], capsys)
    assert "--device {auto,cpu,cuda,cuda:N}" in text
    assert "--dtype {auto,float32,bfloat16,float16}" in text
    assert "--log-level {DEBUG,INFO,WARNING,ERROR,CRITICAL}" in text
    assert "(env GPT2_MODEL; default: bundled demo model (app/models/gpt2-demo))" in text
    assert str(BUNDLED_MODEL) not in text  # no absolute path of this checkout
    assert "(env GPT2_MAX_MODEL_LEN; default: unset)" in text
    assert "(env GPT2_CUDA_GRAPHS; default: on)" in text
    for name in Settings.model_fields:
        assert f"(env GPT2_{name.upper()}; default: " in text, name
    assert "exit status: 0 " in text and " 4 cannot listen" in text


def test_top_level_help_says_how_to_reach_each_commands_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text(["--help"], capsys)
    for command in ("serve", "generate", "bench"):
        assert f"gpt2-serve {command} --help" in text, command


@pytest.mark.parametrize("flag", ["--port", "--api-key", "--host", "--max-queued-requests"])
def test_generate_rejects_server_flags(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", flag, "1", "Hello"])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_generate_takes_every_engine_flag() -> None:
    listed = sections(command_parser("generate"))
    for f in dataclasses.fields(EngineConfig):
        assert "--" + f.name.replace("_", "-") in listed, f.name
    assert set(listed.values()) == {"generation", "model", "engine"}
