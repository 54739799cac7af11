"""Long linear workflows (deeper than Python's recursion limit) can be resumed from their
last step and from their second step: ancestry is walked without recursion."""
from __future__ import annotations

import uuid

from tests.conftest import linear, steps_by_key
from tests.resume.test_resume_shapes import gate_call

N = 1500  # MAX_NODES allows 2,000; a chain of 1,000 already broke the recursive walk


def chain(world, gate: str, gate_at: int) -> dict:
    nodes = [("s1", "webhook", {})]
    for i in range(2, N + 1):
        if i == gate_at:
            nodes.append((f"s{i}", "http_call", gate_call(world, gate)))
        else:
            nodes.append((f"s{i}", "transform", {"expression": "`1`"}))
    return linear(*nodes)


async def test_resume_from_the_end_and_from_the_start_of_a_long_chain(owner, world):
    project = await owner.project()
    for gate_at in (N, 2):
        gate = f"long-{uuid.uuid4().hex[:6]}"
        wf = await owner.workflow(project, chain(world, gate, gate_at))
        run = await owner.wait(await owner.start(wf["id"]), timeout=90)
        assert run["status"] == "failed"
        assert steps_by_key(run)[f"s{gate_at}"]["status"] == "failed"
        assert run["eligible_steps"] == [f"s{gate_at}"]

        plan = await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": f"s{gate_at}"})
        assert plan.status_code == 200, plan.text
        assert len(plan.json()["reuse"]) == gate_at - 1
        assert len(plan.json()["rerun"]) == N - gate_at + 1

        r = await owner.resume(run["id"], f"s{gate_at}")
        assert r.status_code == 202, r.text
        steps = steps_by_key(r.json())
        assert len(steps) == N
        assert steps[f"s{gate_at - 1}"]["reused_from"] is not None
        assert steps[f"s{gate_at}"]["status"] == "pending"
