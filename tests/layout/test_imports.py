"""The process boundary and the import graph, checked on the source.

The API process (HTTP layer, engine client, contract) never imports torch or numpy; the worker
process (core/, worker/, model/) never imports the web or metrics libraries; and no module of
app/ takes part in an import cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

API_SIDE = [
    "api",
    "engine/client",
    "engine/protocol.py",
    "engine/engine_client.py",
    "engine/wire.py",
    "engine/errors.py",
    "engine/config.py",
]
API_SIDE += ["main.py", "metrics.py", "tracing.py", "request_log.py", "config.py", "bench"]
API_SIDE += ["api_workers.py", "cli_flags.py", "preflight.py", "startup_errors.py"]
WORKER_SIDE = ["engine/core", "engine/worker", "model"]
NOT_IN_API = {"torch", "numpy", "transformers", "safetensors"}
NOT_IN_WORKER = {"fastapi", "starlette", "prometheus_client", "pydantic", "pydantic_settings"}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def files(roots: list[str]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        path = APP / root
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield name
            for alias in node.names:  # `from app.engine.client import tokenizer`: a module
                yield f"{name}.{alias.name}"


def offences(roots: list[str], banned: set[str]) -> list[str]:
    return [
        f"{path.relative_to(APP.parent)} imports {name}"
        for path in files(roots)
        for name in imported(path)
        if name.split(".")[0] in banned
    ]


def test_api_side_sources_import_neither_torch_nor_numpy() -> None:
    assert offences(API_SIDE, NOT_IN_API) == []


def test_worker_side_sources_import_no_web_or_metrics_library() -> None:
    assert offences(WORKER_SIDE, NOT_IN_WORKER) == []


def test_the_layout_covers_every_module() -> None:
    """Each module is on one side (or is the package root / the edge), so a new file is
    checked by the rules above."""
    sided = set(files(API_SIDE)) | set(files(WORKER_SIDE))
    edge = {APP / "__init__.py", APP / "cli.py", APP / "hub.py", APP / "engine" / "__init__.py"}
    assert sorted(str(p) for p in set(APP.rglob("*.py")) - sided - edge) == []


def _loaded_after(modules: list[str]) -> set[str]:
    code = f"import sys; import {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


@pytest.mark.parametrize(
    "modules",
    [["app.main", "app.cli", "app.engine.client.async_engine"], ["app.bench.cli"]],
)
def test_importing_the_api_process_loads_neither_torch_nor_numpy(modules: list[str]) -> None:
    assert _loaded_after(modules) & NOT_IN_API == set()


def test_importing_the_worker_loads_no_web_or_metrics_library() -> None:
    loaded = _loaded_after(["app.engine.worker.main", "app.engine.worker.engine_core"])
    assert "torch" in loaded  # the check can see an import
    assert loaded & NOT_IN_WORKER == set()


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in APP.rglob("*.py")}
    return {
        name: {target for target in imported(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_app() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
