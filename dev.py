#!/usr/bin/env python3
"""The quick-start commands: `python3 dev.py serve`, `test`, `bench`, `shell` (`--help` says more).

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


HELP = """usage: python3 dev.py COMMAND [ARGS...]

Development entry point. Every command first creates ./.venv (Python 3.11) and installs
meshhook with its dev tools into it, again whenever pyproject.toml changes.

commands:
  serve [--host H] [--port P] [--no-worker]
        The API and an in-process engine worker on http://127.0.0.1:8000. Without
        DATABASE_URL it starts an embedded PostgreSQL and keeps its data, a JWT secret,
        an encryption key and your dev user id in ~/.local/share/meshhook
        (MESHHOOK_DATA_DIR), and prints a dev token. A taken port: use --port.
  test [PYTEST ARGS]
        The test suite (default: -q over tests/). Pass paths or -k/-m to run a part,
        e.g. `python3 dev.py test tests/test_docs.py -x`.
  bench [--quick]
        The benchmark (bench/README.md); --quick takes seconds, the full run minutes.
  shell [PYTHON ARGS]
        The .venv's Python, e.g. `python3 dev.py shell -m app.cli token`.

environment:
  DATABASE_URL          serve: the PostgreSQL to use (unset: embedded)
  TEST_DATABASE_URL     test: a maintenance database URL on which the suite creates and
                        drops its throwaway databases (default: 127.0.0.1:5432 when it
                        answers, else an embedded server under ~/.cache/meshhook-test-pg)
  MESHHOOK_DATA_DIR     where the embedded server and generated keys live
  more settings: README.md, "Configuration"

The tests also need Node.js 18+ with npm for the generated TypeScript client checks;
without it those tests fail and say so."""


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(HELP)
        return 0 if len(sys.argv) >= 2 else 2
    if sys.argv[1] not in ("serve", "test", "bench", "shell"):
        print(f"dev.py: unknown command {sys.argv[1]!r}\n\n{HELP}", file=sys.stderr)
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
