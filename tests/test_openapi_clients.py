"""Clients built from the spec work: the TypeScript example type-checks against types generated
from openapi/openapi.json, and the Python example resumes a failed run on a live server."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.conftest import steps_by_key
from tests.support import ROOT

EXAMPLES = ROOT / "openapi" / "examples"


def test_the_typescript_client_type_checks_against_the_generated_types():
    missing = [tool for tool in ("node", "npm", "npx") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Node.js is not installed ({', '.join(missing)} not on PATH): "
                    "the TypeScript client check needs Node.js 18+ and npm")
    proc = subprocess.run(["bash", str(EXAMPLES / "typecheck.sh")], cwd=EXAMPLES, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"typecheck.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    generated = (EXAMPLES / "generated" / "api.d.ts").read_text()
    assert '"runs-resume": {' in generated and "ResumeRequest: {" in generated


async def run_example(args: list[str], world, gate: str, before_fix) -> list[str]:
    """Run python_client.py; it waits for Enter once its runs have failed: `before_fix(lines)` checks
    what it printed so far, then the upstream gets fixed (the gate opens) and Enter is pressed.
    Returns every line it printed; fails unless it exited 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "python_client.py"), *args, f"{world.url}/gate/{gate}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, f"the script ended early: {''.join(lines)}{(await proc.stderr.read()).decode()}"
            lines.append(line)
            if line.startswith("fix the upstream service"):
                break
        before_fix(lines)
        world.open(gate)
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines += out.decode().splitlines(keepends=True)
    assert proc.returncode == 0, f"{''.join(lines)}\n{err.decode()}"
    return lines


async def test_the_python_client_resumes_a_failed_run(service, keys, world, make_client):
    gate = f"example-{uuid.uuid4().hex[:8]}"
    user = make_client()

    def before_fix(lines):
        assert any(" failed at step 'charge'" in ln for ln in lines), lines
        assert len(world.seen(gate)) == 1  # one attempt, while the gate was closed

    lines = await run_example(["--base-url", service.url, "--token", user.token, "--timeout", "30"], world, gate,
                              before_fix)
    summary = json.loads(lines[-1])
    assert summary["status"] == "succeeded"
    assert summary["reused"] == ["start"]
    assert summary["output"] == {"amount": 42, "upstream_status": 200}

    # What the user sees through the API agrees with what the script printed.
    parent = await user.run(summary["run_id"])
    child = await user.run(summary["resumed_run_id"])
    assert parent["status"] == "failed" and parent["resumed_runs"] == [child["id"]]
    assert child["parent_run_id"] == parent["id"] and child["trigger"] == "resume"
    assert child["resumed_from_step"] == "charge"
    steps = steps_by_key(child)
    assert steps["start"]["reused_from"] is not None
    assert steps["charge"]["status"] == "succeeded" and steps["charge"]["reused_from"] is None
    assert [r["status"] for r in world.seen(gate)] == [500, 200]


async def test_the_python_client_recovers_runs_after_an_outage_with_one_bulk_resume(service, world, make_client):
    gate = f"outage-{uuid.uuid4().hex[:8]}"
    user = make_client()

    def before_fix(lines):
        assert "5 of 5 runs failed at step 'charge'\n" in lines, lines

    lines = await run_example(["--base-url", service.url, "--token", user.token, "--timeout", "60", "--outage", "5",
                               "--rate", "50"], world, gate, before_fix)
    assert any(ln.startswith("dry run: 5 runs match; 5 would be resumed") for ln in lines), lines
    summary = json.loads(lines[-1])
    assert (summary["status"], summary["matched"], summary["accepted"], summary["succeeded"]) == ("succeeded", 5, 5, 5)

    # What the user sees through the API agrees with what the script printed.
    job = (await user.get(f"/bulk-resumes/{summary['bulk_id']}")).json()
    assert sorted(i["run_id"] for i in job["items"]) == sorted(summary["runs"])
    for run_id in summary["runs"]:
        assert len((await user.run(run_id))["resumed_runs"]) == 1
    assert [r["status"] for r in world.seen(gate)].count(200) == 5
