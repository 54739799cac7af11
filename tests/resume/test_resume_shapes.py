"""Resume from step over DAG shapes: what is reused, what runs again, and the final state."""
from __future__ import annotations

import uuid

from tests.conftest import linear, steps_by_key


def gate_call(world, name: str) -> dict:
    return {"method": "POST", "url": f"{world.url}/gate/{name}", "body": {"from": "{{ run.id }}"},
            "retry": {"max_attempts": 1}}


def node(key, typ, config=None):
    return {"id": key, "data": {"type": typ, "config": config or {}}}


async def fail_then_fix(owner, world, definition, gate, input=None):
    project = await owner.project()
    wf = await owner.workflow(project, definition)
    run_id = await owner.start(wf["id"], input or {"n": 1})
    run = await owner.wait(run_id)
    assert run["status"] == "failed", run
    world.open(gate)
    return project, wf, run


async def test_linear_resume_reuses_the_prefix_and_reruns_the_rest(owner, world):
    gate = f"lin-{uuid.uuid4().hex[:6]}"
    d = linear(("start", "webhook", {}), ("a", "transform", {"expression": "input.n"}),
               ("call", "http_call", gate_call(world, gate)), ("after", "transform", {"expression": "steps.call.status"}))
    _, _, run = await fail_then_fix(owner, world, d, gate)
    steps = steps_by_key(run)
    assert steps["call"]["status"] == "failed" and steps["call"]["eligible_for_resume"]
    assert steps["after"]["status"] == "pending" and not steps["after"]["eligible_for_resume"]
    assert not steps["a"]["eligible_for_resume"]

    plan = (await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "call"})).json()
    assert plan == {"from_step": "call", "reuse": ["start", "a"], "rerun": ["call", "after"], "eligible_steps": ["call"],
                    "override": [], "rerunnable_steps": ["start", "a", "call"]}

    r = await owner.resume(run["id"], "call", reason="gate fixed")
    assert r.status_code == 202, r.text
    child = r.json()
    assert r.headers["location"] == f"/runs/{child['id']}"
    assert child["status"] == "queued" and child["trigger"] == "resume"
    assert child["parent_run_id"] == run["id"] and child["root_run_id"] == run["id"]
    assert child["resumed_from_step"] == "call"
    done = await owner.wait(child["id"])
    assert done["status"] == "succeeded"
    cs, ps = steps_by_key(done), steps
    for key in ("start", "a"):
        assert cs[key]["status"] == "succeeded" and cs[key]["output"] == ps[key]["output"]
        assert cs[key]["reused_from"] is not None
    assert cs["call"]["reused_from"] is None and cs["call"]["output"]["status"] == 200
    assert cs["after"]["output"] == 200
    # the reused steps were not executed again: the gate saw exactly two calls (fail, then success)
    assert [r["status"] for r in world.seen(gate)] == [500, 200]
    parent = await owner.run(run["id"])
    assert parent["resumed_runs"] == [child["id"]]


async def test_diamond_reruns_only_the_failed_side_and_the_join(owner, world):
    gate = f"dia-{uuid.uuid4().hex[:6]}"
    d = {"nodes": [node("start", "webhook"), node("left", "transform", {"expression": "`1`"}),
                   node("right", "http_call", gate_call(world, gate)),
                   node("join", "transform", {"expression": "[steps.left, steps.right.status]"})],
         "edges": [{"source": "start", "target": "left"}, {"source": "start", "target": "right"},
                   {"source": "left", "target": "join"}, {"source": "right", "target": "join"}]}
    _, _, run = await fail_then_fix(owner, world, d, gate)
    r = await owner.resume(run["id"], "right")
    assert r.status_code == 202, r.text
    done = await owner.wait(r.json()["id"])
    s = steps_by_key(done)
    assert done["status"] == "succeeded"
    assert s["left"]["reused_from"] is not None and s["start"]["reused_from"] is not None
    assert s["join"]["output"] == [1, 200]


async def test_two_failed_parallel_branches_resuming_one_reruns_both(owner, world):
    g1, g2 = f"p1-{uuid.uuid4().hex[:6]}", f"p2-{uuid.uuid4().hex[:6]}"
    d = {"nodes": [node("start", "webhook"), node("b1", "http_call", gate_call(world, g1)),
                   node("b2", "http_call", gate_call(world, g2))],
         "edges": [{"source": "start", "target": "b1"}, {"source": "start", "target": "b2"}]}
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    s = steps_by_key(run)
    assert run["status"] == "failed" and s["b1"]["status"] == s["b2"]["status"] == "failed"
    assert set(run["eligible_steps"]) == {"b1", "b2"}
    world.open(g1)
    world.open(g2)
    plan = (await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "b1"})).json()
    assert plan["reuse"] == ["start"] and set(plan["rerun"]) == {"b1", "b2"}
    done = await owner.wait((await owner.resume(run["id"], "b1")).json()["id"])
    assert done["status"] == "succeeded"
    assert len(world.seen(g1)) == 2 and len(world.seen(g2)) == 2


async def test_steps_skipped_by_a_branch_are_evaluated_again_and_stay_skipped(owner, world):
    gate = f"br-{uuid.uuid4().hex[:6]}"
    d = {"nodes": [node("start", "webhook"), node("check", "branch", {"condition": "input.n > `0`"}),
                   node("yes", "http_call", gate_call(world, gate)), node("no", "transform", {"expression": "`0`"}),
                   node("no_after", "transform", {"expression": "`1`"})],
         "edges": [{"source": "start", "target": "check"},
                   {"source": "check", "target": "yes", "sourceHandle": "true"},
                   {"source": "check", "target": "no", "sourceHandle": "false"},
                   {"source": "no", "target": "no_after"}]}
    _, _, run = await fail_then_fix(owner, world, d, gate)
    s = steps_by_key(run)
    assert s["no"]["status"] == "skipped" and s["no_after"]["status"] == "skipped"
    assert s["yes"]["eligible_for_resume"]
    done = await owner.wait((await owner.resume(run["id"], "yes")).json()["id"])
    cs = steps_by_key(done)
    assert done["status"] == "succeeded"
    assert cs["check"]["reused_from"] is not None and cs["check"]["output"] == {"result": True}
    assert cs["no"]["status"] == "skipped" and cs["no_after"]["status"] == "skipped"


async def test_a_chain_of_two_resumes_keeps_the_root(owner, world):
    gate = f"ch-{uuid.uuid4().hex[:6]}"
    d = linear(("start", "webhook", {}), ("call", "http_call", gate_call(world, gate)),
               ("t", "transform", {"expression": "steps.call.body.ok"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    root = await owner.wait(await owner.start(wf["id"]))
    first = await owner.wait((await owner.resume(root["id"], "call")).json()["id"])
    assert first["status"] == "failed" and first["root_run_id"] == root["id"]
    world.open(gate)
    r = await owner.resume(first["id"], "call")
    second = await owner.wait(r.json()["id"])
    assert second["status"] == "succeeded"
    assert second["parent_run_id"] == first["id"] and second["root_run_id"] == root["id"]
    s = steps_by_key(second)
    assert s["start"]["reused_from"] == steps_by_key(first)["start"]["reused_from"] or s["start"]["reused_from"]
    lineage = (await owner.get(f"/runs/{second['id']}/lineage")).json()
    assert lineage["root_run_id"] == root["id"]
    ids = [n["id"] for n in lineage["runs"]]
    assert ids == [root["id"], first["id"], second["id"]]
    by_id = {n["id"]: n for n in lineage["runs"]}
    assert by_id[root["id"]]["children"] == [first["id"]] and by_id[first["id"]]["resumed_from_step"] == "call"


async def test_resuming_from_a_pause_step_completes_it_and_continues(owner, world):
    d = linear(("start", "webhook", {}), ("approve", "pause", {"message": "needs approval"}),
               ("after", "transform", {"expression": "steps.approve.reason"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "paused"
    assert steps_by_key(run)["approve"]["status"] == "paused"
    assert run["eligible_steps"] == ["approve"]
    r = await owner.resume(run["id"], "approve", reason="approved by finance")
    done = await owner.wait(r.json()["id"])
    s = steps_by_key(done)
    assert done["status"] == "succeeded"
    assert s["approve"]["status"] == "succeeded"
    assert s["approve"]["output"]["resumed_by"] == owner.user_id
    assert s["approve"]["output"]["reason"] == "approved by finance"
    assert s["after"]["output"] == "approved by finance"


async def test_a_cancelled_run_can_be_resumed(owner, world):
    gate = f"cx-{uuid.uuid4().hex[:6]}"
    d = linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 30}),
               ("call", "http_call", gate_call(world, gate)))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run_id = await owner.start(wf["id"])

    async def sleeping():
        run = await owner.run(run_id)
        return steps_by_key(run)["wait"]["status"] == "running"

    from tests.support import wait_for
    await wait_for(sleeping, 15, what="the delay to start")
    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    run = await owner.wait(run_id, ("cancelled",))
    s = steps_by_key(run)
    assert s["wait"]["status"] == "cancelled" and s["call"]["status"] == "cancelled"
    assert run["eligible_steps"] == ["wait"]
    world.open(gate)
    # resume from the delay with a newer version where the delay is short
    d2 = linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 0.1}),
                ("call", "http_call", gate_call(world, gate)))
    v = await owner.post(f"/workflows/{wf['id']}/versions", {"definition": d2})
    assert v.status_code == 201 and v.json()["version"] == 2
    r = await owner.resume(run_id, "wait", workflow_version="latest")
    assert r.status_code == 202, r.text
    child = r.json()
    assert child["workflow_version"] == 2
    done = await owner.wait(child["id"])
    assert done["status"] == "succeeded"
    assert steps_by_key(done)["start"]["reused_from"] is not None


async def test_input_override_and_changed_steps_in_a_new_version_rerun(owner, world):
    gate = f"ver-{uuid.uuid4().hex[:6]}"
    d1 = linear(("start", "webhook", {}), ("a", "transform", {"expression": "`1`"}),
                ("b", "transform", {"expression": "`2`"}), ("call", "http_call", gate_call(world, gate)),
                ("echo", "transform", {"expression": "input"}))
    project, wf, run = await fail_then_fix(owner, world, d1, gate, {"n": 1})
    d2 = linear(("start", "webhook", {}), ("a", "transform", {"expression": "`1`"}),
                ("b", "transform", {"expression": "`20`"}), ("call", "http_call", gate_call(world, gate)),
                ("echo", "transform", {"expression": "input"}))
    await owner.post(f"/workflows/{wf['id']}/versions", {"definition": d2})
    plan_same = (await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "call"})).json()
    assert plan_same["reuse"] == ["start", "a", "b"]
    r = await owner.resume(run["id"], "call", workflow_version=2, input={"n": 2})
    assert r.status_code == 202, r.text
    done = await owner.wait(r.json()["id"])
    s = steps_by_key(done)
    assert done["input"] == {"n": 2} and done["workflow_version"] == 2
    assert s["a"]["reused_from"] is not None            # unchanged: reused
    assert s["b"]["reused_from"] is None and s["b"]["output"] == 20  # changed config: re-executed
    assert s["start"]["reused_from"] is not None and s["start"]["output"] == {"n": 1}  # reused as stored
    assert s["echo"]["output"] == {"n": 2}
