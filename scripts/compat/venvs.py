"""One virtual environment per client under .cache/compat/, so that neither the project's .venv
nor the clients' pins (each brings its own transformers, pydantic, openai...) meet.

An environment is reused while its marker names the same pip requirement; otherwise it is
rebuilt from scratch. The interpreter is the first found with the version a client needs
(inference-perf 0.7.0 needs Python 3.12): $COMPAT_PYTHON, then python3.13 / python3.12 /
python3 on PATH, then pyenv's installed versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from scripts.compat.server import ROOT

CACHE = ROOT / ".cache" / "compat"


def python_version(executable: str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter, or None when it does not run (a pyenv shim for a
    version that is not selected exits non-zero)."""
    try:
        out = subprocess.run(
            [executable, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def candidate_pythons() -> list[str]:
    found: list[str] = []
    if os.environ.get("COMPAT_PYTHON"):
        found.append(os.environ["COMPAT_PYTHON"])
    for name in ("python3.13", "python3.12", "python3"):
        path = shutil.which(name)
        if path:
            found.append(path)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        found += [str(p) for p in sorted(pyenv.glob("3.1[0-9]*/bin/python3"), reverse=True)]
    return found


def find_python(minimum: tuple[int, int], maximum: tuple[int, int]) -> str | None:
    """The first candidate whose version is in [minimum, maximum]."""
    for executable in candidate_pythons():
        version = python_version(executable)
        if version is not None and minimum <= version <= maximum:
            return executable
    return None


def ensure_venv(name: str, requirement: str, python: str, log_path: Path) -> Path:
    """The environment's bin/ directory, with `requirement` installed (pip's output in
    log_path). Raises RuntimeError with the log's tail when pip fails."""
    home = CACHE / name
    marker = home / ".compat-installed"
    if marker.exists() and marker.read_text() == requirement:
        return home / "bin"
    shutil.rmtree(home, ignore_errors=True)
    with open(log_path, "w") as log:
        for step in (
            [python, "-m", "venv", str(home)],
            [str(home / "bin" / "python"), "-m", "pip", "install", requirement],
        ):
            log.write(f"$ {' '.join(step)}\n")
            log.flush()
            done = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"installing {requirement} failed:\n{tail}")
    marker.write_text(requirement)
    return home / "bin"
