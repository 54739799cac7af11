#!/usr/bin/env python3
"""The two quick-start commands: `python3 dev.py serve` and `python3 dev.py test`.

Each creates ./.venv on first use and (re)installs the project when pyproject.toml
changes, so a fresh machine with only Python 3.11 and the package registry is enough.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env() -> None:
    if not PY.exists():
        print("dev: creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".meshhook-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        print("dev: installing meshhook and its dev tools into .venv …", flush=True)
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
        stamp.write_text(want)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("serve", "test", "bench", "shell"):
        print("usage: python3 dev.py serve [meshhook serve args] | test [pytest args] | bench [--quick]")
        return 2
    ensure_env()
    cmd, rest = sys.argv[1], sys.argv[2:]
    os.chdir(ROOT)
    if cmd == "serve":
        argv = [str(PY), "-m", "app.cli", "serve", *rest]
    elif cmd == "test":
        argv = [str(PY), "-m", "pytest", *(rest or ["-q"])]
    elif cmd == "bench":
        argv = [str(PY), "-m", "bench", *rest]
    else:
        argv = [str(PY), *rest]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
