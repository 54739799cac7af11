"""The resume, row-level-security, engine and event-stream tests, run again through a real
PgBouncer in transaction mode: the service is two API replicas and two workers on the pooler
(requests spread over both), and the tests' own SQL goes through the pooler as well."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SUITES = ["tests/resume", "tests/test_rls.py", "tests/engine", "tests/runs/test_event_stream.py"]


def test_resume_rls_and_engine_tests_pass_through_pgbouncer(tmp_path: Path):
    env = dict(os.environ, MESHHOOK_TEST_POOLER="transaction")
    inner = tmp_path / "inner"
    # test_worker_faults drives in-process workers on a database of its own, not the pooled service
    done = subprocess.run([sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
                           "--ignore=tests/engine/test_worker_faults.py", f"--basetemp={inner}"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=2400, check=False)
    tail = done.stdout[-6000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail and " error" not in tail, tail

    log = (inner / "logs0" / "api.log").read_text(errors="replace")
    ready = [ln for ln in log.splitlines() if "database pool ready" in ln]
    assert len(ready) == 2 and all('"pooler":"transaction"' in ln.replace(" ", "") for ln in ready), ready
    assert all('"notifications":"listen"' in ln.replace(" ", "") for ln in ready), ready
    assert log.count("worker started") == 2
    assert "prepared statement" not in log
