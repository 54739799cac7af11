"""Step types and scheduling: webhook, transform, branch skipping, joins, terminate, pause,
short and durable delays, and parallel branches that really overlap."""
from __future__ import annotations

import uuid

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import edge, events, node, run_definition, uniq
from tests.support import wait_for


async def test_webhook_output_is_the_input_and_transform_computes(owner):
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("total", "transform", {"expression": "sum(input.items[].price)"}),
        ("shape", "transform", {"expression": "{total: steps.total, first: steps.start.items[0].sku, run: run.id}"})),
        {"items": [{"sku": "a", "price": 2}, {"sku": "b", "price": 5}]})
    assert run["status"] == "succeeded"
    steps = steps_by_key(run)
    assert steps["start"]["output"] == {"items": [{"sku": "a", "price": 2}, {"sku": "b", "price": 5}]}
    assert steps["total"]["output"] == 7
    assert steps["shape"]["output"] == {"total": 7, "first": "a", "run": run["id"]}
    assert all(s["attempt"] == 1 and s["started_at"] and s["finished_at"] for s in run["steps"])


def _branchy() -> dict:
    """start → check ─true→ yes ─→ join
                     └false→ no ─→ no_child
                                 └─→ join"""
    return {"nodes": [node("start", "webhook"), node("check", "branch", {"condition": "input.n > `10`"}),
                      node("yes", "transform", {"expression": "'big'"}),
                      node("no", "transform", {"expression": "'small'"}),
                      node("no_child", "transform", {"expression": "steps.no"}),
                      node("join", "transform", {"expression": "[steps.yes, steps.no]"})],
            "edges": [edge("start", "check"), edge("check", "yes", "true"), edge("check", "no", "false"),
                      edge("no", "no_child"), edge("yes", "join"), edge("no", "join")]}


async def test_branch_skips_the_untaken_side_and_a_join_with_one_live_parent_runs(owner):
    project = await owner.project()
    wf = await owner.workflow(project, _branchy())
    big = await owner.wait(await owner.start(wf["id"], {"n": 42}))
    small = await owner.wait(await owner.start(wf["id"], {"n": 3}))

    assert big["status"] == "succeeded"
    s = steps_by_key(big)
    assert s["check"]["output"] == {"result": True}
    assert (s["yes"]["status"], s["no"]["status"], s["no_child"]["status"]) == ("succeeded", "skipped", "skipped")
    assert s["join"]["status"] == "succeeded" and s["join"]["output"] == ["big", None]
    assert s["no"]["output"] is None and s["no"]["attempt"] == 0

    assert small["status"] == "succeeded"
    s = steps_by_key(small)
    assert s["check"]["output"] == {"result": False}
    assert (s["yes"]["status"], s["no"]["status"], s["no_child"]["status"]) == ("skipped", "succeeded", "succeeded")
    assert s["join"]["output"] == [None, "small"]
    skipped = [e["step_key"] for e in await events(owner, small["id"]) if e["type"] == "step_skipped"]
    assert skipped == ["yes"]


async def test_a_step_whose_parents_are_all_skipped_is_skipped(owner):
    definition = {"nodes": [node("start", "webhook"), node("check", "branch", {"condition": "`false`"}),
                            node("a", "transform", {"expression": "`1`"}), node("b", "transform", {"expression": "`2`"}),
                            node("both", "transform", {"expression": "`3`"})],
                  "edges": [edge("start", "check"), edge("check", "a", "true"), edge("check", "b", "true"),
                            edge("a", "both"), edge("b", "both")]}
    run = await run_definition(owner, definition)
    assert run["status"] == "succeeded"
    s = steps_by_key(run)
    assert [s[k]["status"] for k in ("a", "b", "both")] == ["skipped", "skipped", "skipped"]


async def test_expression_errors_fail_the_step(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}),
                                             ("bad", "transform", {"expression": "length(input.n)"})), {"n": 5})
    assert run["status"] == "failed"
    bad = steps_by_key(run)["bad"]
    assert bad["status"] == "failed" and bad["error"]["type"] == "expression_error"


async def test_terminate_succeeded_ends_the_run_and_skips_the_rest(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}),
                                             ("stop", "terminate", {"status": "succeeded", "message": "enough"}),
                                             ("never", "transform", {"expression": "`1`"})))
    assert run["status"] == "succeeded"
    assert run["error"] is None
    s = steps_by_key(run)
    assert s["stop"]["status"] == "succeeded"
    assert s["never"]["status"] == "skipped"


async def test_terminate_failed_fails_the_run_with_its_message(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}),
                                             ("stop", "terminate", {"status": "failed", "message": "bad order {{ input.id }}"}),
                                             ("never", "transform", {"expression": "`1`"})), {"id": "o-1"})
    assert run["status"] == "failed"
    assert run["error"]["type"] == "terminated"
    assert run["error"]["message"] == "bad order o-1"
    assert run["finished_at"] is not None
    s = steps_by_key(run)
    assert s["stop"]["status"] == "failed"
    assert s["never"]["status"] == "skipped"


async def test_a_template_error_in_terminate_fails_the_step_not_the_worker(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}),
                                             ("stop", "terminate", {"status": "failed",
                                                                    "message": "{{ length(input.n) }}"})),
                               {"n": 5}, timeout=10)
    assert run["status"] == "failed"
    assert steps_by_key(run)["stop"]["status"] == "failed"


async def test_pause_step_pauses_the_step_and_the_run(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}),
                                             ("approve", "pause", {"message": "needs a human"}),
                                             ("after", "transform", {"expression": "`1`"})))
    assert run["status"] == "paused"
    s = steps_by_key(run)
    assert s["approve"]["status"] == "paused"
    assert s["after"]["status"] == "pending"
    assert run["finished_at"] is None
    types = [e["type"] for e in await events(owner, run["id"])]
    assert "step_paused" in types and types[-1] == "run_paused"


async def test_short_delay_completes(owner):
    run = await run_definition(owner, linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 0.3}),
                                             ("after", "transform", {"expression": "`1`"})))
    assert run["status"] == "succeeded"
    s = steps_by_key(run)
    assert s["wait"]["status"] == "succeeded"
    assert s["after"]["output"] == 1


async def test_durable_delay_releases_the_run_while_it_sleeps(owner, db):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 2.5}),
                                              ("after", "transform", {"expression": "`1`"})))
    run_id = await owner.start(wf["id"])

    async def sleeping():
        row = await db.fetchrow("select status, lease_owner, wake_at from runs where id = $1", uuid.UUID(run_id))
        return row if row["wake_at"] is not None else None

    row = await wait_for(sleeping, 5, 0.05, "the run to sleep in the database")
    assert row["status"] == "running"
    assert row["lease_owner"] is None
    step = await db.fetchrow("select status, wake_at from step_runs where run_id = $1 and step_key = 'wait'",
                             uuid.UUID(run_id))
    assert step["status"] == "running" and step["wake_at"] == row["wake_at"]
    run = await owner.wait(run_id, timeout=15)
    assert run["status"] == "succeeded"
    assert steps_by_key(run)["after"]["output"] == 1
    assert (await db.fetchval("select wake_at from runs where id = $1", uuid.UUID(run_id))) is None


async def test_parallel_branches_overlap(owner, world):
    a, b = uniq("par"), uniq("par")
    definition = {"nodes": [node("start", "webhook"),
                            node("a", "http_call", {"url": f"{world.url}/slow/{a}?s=0.6"}),
                            node("b", "http_call", {"url": f"{world.url}/slow/{b}?s=0.6"}),
                            node("join", "transform", {"expression": "[steps.a.status, steps.b.status]"})],
                  "edges": [edge("start", "a"), edge("start", "b"), edge("a", "join"), edge("b", "join")]}
    run = await run_definition(owner, definition)
    assert run["status"] == "succeeded"
    assert steps_by_key(run)["join"]["output"] == [200, 200]
    (ra,), (rb,) = world.seen(a), world.seen(b)
    assert ra["started"] < rb["ended"] and rb["started"] < ra["ended"], "the two calls did not overlap"
