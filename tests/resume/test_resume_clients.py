"""The example Python client's "approve once" and "mark succeeded", against the running service."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import uuid

import httpx

from tests.conftest import steps_by_key
from tests.resume.test_resolved_rerun_outputs import paused_order
from tests.support import ROOT

EXAMPLE = ROOT / "openapi" / "examples" / "python_client.py"


def example_module():
    spec = importlib.util.spec_from_file_location("python_client_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_approve_once_returns_the_same_run_and_charges_once(service, owner, make_client, world):
    client_example = example_module()
    project, _, run, charge = await paused_order(owner, world)
    colleague = make_client()
    await owner.add_member(project, colleague, "editor")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {owner.token}"}, timeout=30) as http:
        first = await asyncio.to_thread(client_example.approve_once, http, run["id"], "review", "approved")
        assert (await owner.wait(first))["status"] == "succeeded"
        retried = await asyncio.to_thread(client_example.approve_once, http, run["id"], "review", "approved")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {colleague.token}"}, timeout=30) as http:
        other = await asyncio.to_thread(client_example.approve_once, http, run["id"], "review", "me too")
    assert retried == other == first  # a replay of the same request, then a 409 with resolved_by
    assert len(world.seen(charge)) == 1
    assert (await owner.run(run["id"]))["resumed_runs"] == [first]


async def test_the_script_marks_the_failed_step_succeeded_without_calling_upstream(service, world, make_client):
    gate = f"mark-{uuid.uuid4().hex[:8]}"
    user = make_client()
    manual = {"status": 201, "body": {"paid": True, "by": "phone"}}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--base-url", service.url, "--token", user.token, "--timeout", "30",
        "--mark-succeeded", json.dumps(manual), f"{world.url}/gate/{gate}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, f"{out.decode()}\n{err.decode()}"
    lines = out.decode().splitlines()
    assert "marking ['charge'] succeeded; re-executing ['summary']; reusing ['start']" in lines
    summary = json.loads(lines[-1])
    assert summary["status"] == "succeeded" and summary["output"] == {"amount": 42, "upstream_status": 201}
    assert len(world.seen(gate)) == 1  # only the original failed attempt
    charge = steps_by_key(await user.run(summary["resumed_run_id"]))["charge"]
    assert charge["output"] == manual and charge["override"]["reason"] == "done by hand"
