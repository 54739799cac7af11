"""Lint and types are part of "done" (STYLE 22): ruff and mypy over app/, configured in
pyproject.toml, run as part of `python3 dev.py test` so CI runs them too."""
from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_in_app():
    proc = _run("ruff", "check", "--output-format", "concise", "app")
    assert proc.returncode == 0, f"ruff check app:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


def test_mypy_finds_nothing_in_app():
    proc = _run("mypy")  # files and options: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, f"mypy:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


def test_app_is_ruff_formatted():
    """`ruff format --check app`. Green from the repo-wide `ruff format` commit on (done once, after the
    parallel branches are merged, so that they do not conflict); until then this fails and lists the files."""
    proc = _run("ruff", "format", "--check", "app")
    assert proc.returncode == 0, (
        "some files in app/ are not ruff-formatted; run `.venv/bin/ruff format app`:\n"
        f"{proc.stdout[-6000:]}{proc.stderr[-2000:]}")
