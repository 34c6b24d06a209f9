"""Why the server could not start, as one line and a documented exit status (docs/operations.md).

A failed start is reported once, by the CLI: one line that says what is wrong and what to do.
The traceback behind it is logged at DEBUG only (--log-level DEBUG), since for a missing
directory or a taken port it says nothing the line does not.
"""

from __future__ import annotations

import enum

from pydantic import ValidationError

from app.hub import ModelNotFoundError


class ExitStatus(enum.IntEnum):
    """gpt2-serve's exit statuses: EXIT_STATUSES says what each means."""

    OK = 0
    FAILED = 1
    CONFIG = 2  # argparse's own status for a bad flag
    MODEL = 3
    ADDRESS = 4


# Shown by `gpt2-serve serve --help`; docs/operations.md has the same table.
EXIT_STATUSES = {
    ExitStatus.OK: "stopped by SIGTERM/SIGINT after draining",
    ExitStatus.FAILED: "any other failure: the engine worker could not start, an HTTP "
    "process died, a second signal",
    ExitStatus.CONFIG: "a flag or GPT2_* value is invalid (unknown flag, out of range, empty)",
    ExitStatus.MODEL: "the model is not found, not reachable, or not a GPT-2 checkpoint",
    ExitStatus.ADDRESS: "cannot listen on --host/--port: the port is in use or not permitted",
}


class StartupError(Exception):
    """A start that cannot go on: `str(error)` is the one line to show, `status` the exit code."""

    def __init__(self, message: str, status: ExitStatus) -> None:
        super().__init__(message)
        self.status = status


def describe(exc: BaseException) -> StartupError:
    """The one-line form of whatever stopped the start."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, ValidationError):
        return StartupError(settings_error(exc), ExitStatus.CONFIG)
    if isinstance(exc, ModelNotFoundError):
        return StartupError(str(exc), ExitStatus.MODEL)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return StartupError(
        f"the server could not start: {text} (--log-level DEBUG shows the traceback)",
        ExitStatus.FAILED,
    )


def settings_error(exc: ValidationError) -> str:
    """Each invalid setting as its flag and variable, what is wrong and the value given."""
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if name:
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} / GPT2_{name.upper()}: {message} (got {error['input']!r})")
        else:  # a rule across fields (EngineConfig's): its message names them
            problems.append(message)
    return "invalid setting: " + "; ".join(problems)
