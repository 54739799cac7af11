"""Clients built from the spec work: the TypeScript example type-checks against types generated
from openapi/openapi.json, openapi-python-client (default config) generates a client that imports and
talks to a live server, Redocly CLI (default rules) finds no error, and the Python example resumes a
failed run on a live server.

The Node.js checks need node and npm (README: what the suite needs); without them they fail and say so,
rather than pass unseen."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import steps_by_key
from tests.support import ROOT

EXAMPLES = ROOT / "openapi" / "examples"
SPEC = ROOT / "openapi" / "openapi.json"
REDOCLY = "@redocly/cli@2"


def need_node() -> None:
    missing = [tool for tool in ("node", "npm", "npx") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"NODE.JS IS MISSING ({', '.join(missing)} not on PATH): the generated-client and spec-lint "
                    "checks need Node.js 18+ with npm. Install them (e.g. `apt-get install nodejs npm`).",
                    pytrace=False)


def test_redocly_finds_no_error_in_the_spec(tmp_path):
    need_node()
    proc = subprocess.run(["npx", "--yes", REDOCLY, "lint", str(SPEC), "--format", "stylish"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Your API description is valid" in out, out[-6000:]
    # Warnings are allowed, but not the kinds generators trip over.
    for rule in ("no-invalid-schema-examples", "no-invalid-media-type-examples", "operation-4xx-response",
                 "security-defined", "no-empty-servers"):
        assert rule not in out, out[-6000:]


def test_openapi_python_client_generates_a_client_that_works(tmp_path, service):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hook
    proc = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(SPEC),
                           "--output-path", str(tmp_path / "client")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Warning" not in proc.stdout + proc.stderr, proc.stdout[-4000:] + proc.stderr[-4000:]
    script = f"""
import importlib, pkgutil, uuid
import mesh_hook_engine_service_client as pkg
for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(mod.name)
from mesh_hook_engine_service_client import AuthenticatedClient, Client
from mesh_hook_engine_service_client.api.health import health_ready
from mesh_hook_engine_service_client.api.runs import runs_get
from mesh_hook_engine_service_client.models import StepAttempt, StepDetail
ready = health_ready.sync_detailed(client=Client(base_url={service.url!r}))
assert ready.status_code == 200, ready
missing = runs_get.sync_detailed(uuid.uuid4(), client=AuthenticatedClient(base_url={service.url!r}, token="x"))
assert missing.status_code == 401, missing
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "client", capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout[-4000:] + run.stderr[-4000:]


def test_the_typescript_client_type_checks_against_the_generated_types():
    need_node()
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
