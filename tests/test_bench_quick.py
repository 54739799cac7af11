"""The benchmark must not rot: `python -m bench --quick` runs end to end (its own database,
service and workers) and reports every number the issue names. No timing is asserted here;
speed belongs to the benchmark itself."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.support import ROOT


def test_quick_benchmark_reports_every_number(tmp_path):
    from bench.runner import NUMERIC_KEYS

    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench failed:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    res = json.loads(out.read_text())
    for key in NUMERIC_KEYS:
        value = res.get(key)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} = {value!r}"
        assert math.isfinite(value) and value > 0, f"{key} = {value!r}"
    for key in ("resume_10_steps_p99_ms", "resume_100_steps_p99_ms"):
        assert isinstance(res.get(key), (int, float)), key
    machine = res["machine"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert machine["python"] and machine["postgres"]
    assert isinstance(res["git_rev"], str) and res["git_rev"]
    assert "| resumes/s, 32 clients |" in proc.stdout  # the markdown table
