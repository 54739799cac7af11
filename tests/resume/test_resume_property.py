"""Property: over random DAGs, a failed run resumed from its failed step ends exactly as an
uninterrupted run of the same input would, and the outside world sees exactly the planned
re-executions and nothing else."""
from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Client, steps_by_key


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=3, max_value=30))
    call_at = draw(st.integers(min_value=1, max_value=n - 1))
    parents = {}
    for i in range(1, n):
        k = draw(st.integers(min_value=1, max_value=min(3, i)))
        parents[i] = sorted(set(draw(st.lists(st.integers(min_value=0, max_value=i - 1), min_size=k, max_size=k))))
    seeds = draw(st.lists(st.integers(min_value=-50, max_value=50), min_size=n, max_size=n))
    return n, call_at, parents, seeds


def definition(world_url: str, gate: str, n: int, call_at: int, parents: dict, seeds: list) -> dict:
    def ref(p: int) -> str:
        return f"steps.s{p}.status" if p == call_at else f"steps.s{p}"

    nodes = [{"id": "s0", "data": {"type": "webhook"}}]
    for i in range(1, n):
        if i == call_at:
            nodes.append({"id": f"s{i}", "data": {"type": "http_call", "config": {
                "method": "POST", "url": f"{world_url}/gate/{gate}", "body": {"seed": seeds[i]},
                "retry": {"max_attempts": 1}}}})
        else:
            parts = ", ".join(ref(p) for p in parents[i])
            nodes.append({"id": f"s{i}", "data": {"type": "transform",
                                                   "config": {"expression": f"[`{seeds[i]}`, input.x, {parts}]"}}})
    edges = [{"source": f"s{p}", "target": f"s{i}"} for i in range(1, n) for p in parents[i]]
    return {"nodes": nodes, "edges": edges}


def comparable(run: dict, call_key: str) -> dict:
    out = {}
    for key, s in steps_by_key(run).items():
        out[key] = (s["status"], s["output"]["status"] if key == call_key and s["output"] else s["output"])
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(shape=dags(), x=st.integers(min_value=0, max_value=9))
async def test_resumed_run_equals_an_uninterrupted_run(service, keys, world, shape, x):
    n, call_at, parents, seeds = shape
    gate = f"prop-{uuid.uuid4().hex[:8]}"
    owner = Client(service.url, keys)
    try:
        project = await owner.project()
        wf = await owner.workflow(project, definition(world.url, gate, n, call_at, parents, seeds))
        failed = await owner.wait(await owner.start(wf["id"], {"x": x}), timeout=30)
        call_key = f"s{call_at}"
        assert failed["status"] == "failed"
        assert steps_by_key(failed)[call_key]["status"] == "failed"
        plan = (await owner.get(f"/runs/{failed['id']}/resume-plan", params={"from_step": call_key})).json()

        world.open(gate)
        r = await owner.resume(failed["id"], call_key)
        assert r.status_code == 202, r.text
        resumed = await owner.wait(r.json()["id"], timeout=30)
        assert resumed["status"] == "succeeded"
        rs = steps_by_key(resumed)
        assert sorted(k for k, s in rs.items() if s["reused_from"]) == sorted(plan["reuse"])
        # the world saw the failed call and exactly one planned re-execution
        assert [q["status"] for q in world.seen(gate)] == [500, 200]
        assert world.seen(gate)[1]["idempotency_key"] == f"{resumed['id']}:{call_key}"

        reference = await owner.wait(await owner.start(wf["id"], {"x": x}), timeout=30)
        assert reference["status"] == "succeeded"
        assert comparable(resumed, call_key) == comparable(reference, call_key)
    finally:
        await owner.aclose()
