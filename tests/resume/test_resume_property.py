"""Property: over random DAGs, a failed run resumed from its failed step ends exactly as an
uninterrupted run of the same input would, and the outside world sees exactly the planned
re-executions and nothing else."""
from __future__ import annotations

import json
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


# JSON values a step could return (no backticks, so they fit a JMESPath literal in the reference workflow).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-1000, max_value=1000) | st.text("abcxyz 01", max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abkz", min_size=1, max_size=3), inner,
                                                                max_size=3),
    max_leaves=6)


def with_literals(definition: dict, literals: dict) -> dict:
    """The same workflow where the given steps are transforms that return those values."""
    nodes = []
    for nd in definition["nodes"]:
        if nd["id"] in literals:
            expression = "`" + json.dumps(literals[nd["id"]]) + "`"
            nd = {"id": nd["id"], "data": {"type": "transform", "config": {"expression": expression}}}
        nodes.append(nd)
    return {"nodes": nodes, "edges": definition["edges"]}


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(shape=dags(), x=st.integers(min_value=0, max_value=9), data=st.data())
async def test_resuming_with_manual_outputs_equals_a_run_where_those_steps_returned_them(service, keys, world, shape,
                                                                                        x, data):
    n, call_at, parents, seeds = shape
    gate = f"propo-{uuid.uuid4().hex[:8]}"
    call_key = f"s{call_at}"
    owner = Client(service.url, keys)
    try:
        project = await owner.project()
        d = definition(world.url, gate, n, call_at, parents, seeds)
        wf = await owner.workflow(project, d)
        failed = await owner.wait(await owner.start(wf["id"], {"x": x}), timeout=30)
        assert failed["status"] == "failed"
        plan = (await owner.get(f"/runs/{failed['id']}/resume-plan", params={"from_step": call_key})).json()
        chosen = data.draw(st.lists(st.sampled_from(plan["rerun"]), unique=True, max_size=min(4, len(plan["rerun"]))),
                           label="overridden steps")
        outputs = {k: data.draw(json_values, label=f"output of {k}") for k in chosen}

        preview = (await owner.post(f"/runs/{failed['id']}/resume-plan",
                                    {"from_step": call_key, "outputs": outputs})).json()
        assert sorted(preview["override"]) == sorted(chosen)
        assert sorted(preview["rerun"] + preview["override"]) == sorted(plan["rerun"])

        world.open(gate)
        r = await owner.resume(failed["id"], call_key, outputs=outputs)
        assert r.status_code == 202, r.text
        resumed = await owner.wait(r.json()["id"], timeout=30)
        assert resumed["status"] == "succeeded"
        rs = steps_by_key(resumed)
        for k, v in outputs.items():
            assert rs[k]["status"] == "succeeded" and rs[k]["output"] == v
            assert rs[k]["override"] is not None and rs[k]["reused_from"] is None
        # the gate saw the failure, and the planned re-execution only when it was not given by hand
        assert [q["status"] for q in world.seen(gate)] == [500] + ([] if call_key in outputs else [200])

        reference_wf = await owner.workflow(project, with_literals(d, outputs))
        reference = await owner.wait(await owner.start(reference_wf["id"], {"x": x}), timeout=30)
        assert reference["status"] == "succeeded"
        compare_key = "" if call_key in outputs else call_key
        assert comparable(resumed, compare_key) == comparable(reference, compare_key)
    finally:
        await owner.aclose()
