"""The flags of `gpt2-serve serve` and `generate`, made from the Settings fields.

One flag per field (engine options included: they are EngineConfig's fields), named --<name>,
with one line of help: what it does (the field's description), then its environment variable and
its default. Each field's metadata names its section of --help (`group`, see SETTING_GROUPS), so
a field added to Settings or EngineConfig is a flag, in the right section, with no edit here.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from app.config import BUNDLED_MODEL, Settings
from app.engine.config import EngineConfig

# The sections of `gpt2-serve serve --help`, in order: a field's `group` names one of them.
SETTING_GROUPS = {
    "model": "what is served: the checkpoint, where it runs, and the chat prompt format",
    "engine": "batching, KV cache and kernels (the engine worker)",
    "server": "the HTTP server: address, authentication, processes, shutdown",
    "limits": "admission and HTTP limits: past them a request gets 429, 413, 408 or 503",
    "observability": "logs and metrics",
}
DEFAULT_GROUP = "server"  # a Settings field declared without one
ENGINE_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig))


def setting_group(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("group", DEFAULT_GROUP))


def add_settings_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = ()) -> None:
    """A flag for each Settings field (only `names`, when given), in its group's section."""
    fields = {
        name: field for name, field in Settings.model_fields.items() if not names or name in names
    }
    for name, field in fields.items():
        if setting_group(field) not in SETTING_GROUPS:
            raise ValueError(f"Settings.{name}: unknown group {setting_group(field)!r}")
    # Sections in SETTING_GROUPS' order, only those with a flag (generate has no server flags).
    used = {setting_group(field) for field in fields.values()}
    sections = {
        group: parser.add_argument_group(group, about)
        for group, about in SETTING_GROUPS.items()
        if group in used
    }
    for name, field in fields.items():
        _add_flag(sections[setting_group(field)], name, field)


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Only the engine's flags: what `generate` (the engine in-process, no server) can use."""
    add_settings_flags(parser, ENGINE_FIELDS)


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the flags given (None: not given), the environment and the defaults."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def _add_flag(group: Any, name: str, field: FieldInfo) -> None:
    flag = "--" + name.replace("_", "-")
    origin = get_origin(field.annotation)
    listed = origin in (list, tuple)  # comma-separated or a JSON list, parsed by Settings
    what = (field.description or name.replace("_", " ")) + (
        ", comma-separated or a JSON list" if listed else ""
    )
    # argparse %-formats help strings.
    help_text = f"{what} (env GPT2_{name.upper()}; default: {_shown_default(name, field)})"
    options: dict[str, Any] = {"dest": name, "default": None, "help": help_text.replace("%", "%%")}
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "metavar" in extra:
        options["metavar"] = extra["metavar"]
    kinds = [a for a in get_args(field.annotation) if a is not type(None)] or [field.annotation]
    if origin is Literal:
        options["choices"] = get_args(field.annotation)
    elif kinds[0] is bool and not listed:
        options["action"] = argparse.BooleanOptionalAction
    elif kinds[0] in (int, float, str, Path) and not listed:
        options["type"] = kinds[0]
    group.add_argument(flag, **options)


def _shown_default(name: str, field: FieldInfo) -> str:
    """The default as a user reads it: no absolute paths, "unset" for None, lists joined."""
    default = field.get_default(call_default_factory=True)
    if name == "model" and default == BUNDLED_MODEL.name:
        return f"bundled demo model (app/models/{default})"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list | tuple):
        return ",".join(str(item) for item in default) or "none"
    if isinstance(default, str) and (not default or any(c.isspace() for c in default)):
        return repr(default)  # quoted, so an empty value or a newline can be seen
    return str(default)
