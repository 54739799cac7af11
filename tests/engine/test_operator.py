"""Operator actions: cancel aborts the in-flight request and starts nothing new; pause lets the
in-flight step finish and starts nothing new."""
from __future__ import annotations

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import events, uniq
from tests.support import wait_for


async def _blocked_run(owner, world, seconds: float = 1.0):
    project = await owner.project()
    name = uniq("slow")
    wf = await owner.workflow(project, linear(("start", "webhook", {}),
                                              ("call", "http_call", {"url": f"{world.url}/slow/{name}?s={seconds}"}),
                                              ("after", "transform", {"expression": "`1`"})))
    run_id = await owner.start(wf["id"])

    async def arrived():
        return world.counts[name] >= 1

    await wait_for(arrived, 10, 0.02, "the slow call to arrive")
    return project, run_id, name


async def test_cancel_aborts_the_inflight_step_and_starts_nothing_new(owner, make_client, world):
    project, run_id, name = await _blocked_run(owner, world, seconds=5.0)
    viewer = make_client()
    await owner.add_member(project, viewer, "viewer")
    assert (await viewer.post(f"/runs/{run_id}/cancel")).status_code == 403
    assert (await make_client().post(f"/runs/{run_id}/cancel")).status_code == 404

    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    # a pause cannot overrule the pending cancel
    assert (await owner.post(f"/runs/{run_id}/pause")).status_code == 409
    run = await owner.wait(run_id, ("succeeded", "failed", "cancelled", "paused"))
    assert run["status"] == "cancelled"
    assert run["finished_at"] is not None
    s = steps_by_key(run)
    assert s["call"]["status"] == "cancelled"  # in flight when cancelled: the request was aborted
    assert s["call"]["error"]["type"] == "cancelled"
    assert s["call"]["finished_at"] is not None
    assert s["after"]["status"] == "cancelled"
    assert s["after"]["started_at"] is None and s["after"]["attempt"] == 0
    assert world.counts[name] == 1  # sent once, never again
    assert world.seen(name) == []  # the run was cancelled before the upstream's 5 s answer
    types = [e["type"] for e in await events(owner, run_id)]
    assert "run_cancel_requested" in types and types[-1] == "run_cancelled"

    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await owner.post(f"/runs/{run_id}/pause")).status_code == 409


async def test_pause_lets_the_inflight_step_finish_then_the_run_is_paused(owner, make_client, world):
    project, run_id, _ = await _blocked_run(owner, world)
    viewer = make_client()
    await owner.add_member(project, viewer, "viewer")
    assert (await viewer.post(f"/runs/{run_id}/pause")).status_code == 403

    r = await owner.post(f"/runs/{run_id}/pause")
    assert r.status_code == 202, r.text
    run = await owner.wait(run_id)
    assert run["status"] == "paused"
    assert run["finished_at"] is None
    s = steps_by_key(run)
    assert s["call"]["status"] == "succeeded"
    assert s["after"]["status"] == "paused"
    assert s["after"]["started_at"] is None
    assert (await owner.post(f"/runs/{run_id}/pause")).status_code == 409

    # A paused run is cancelled on the spot.
    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    run = await owner.run(run_id)
    assert run["status"] == "cancelled"
    assert run["finished_at"] is not None
    s = steps_by_key(run)
    assert s["call"]["status"] == "succeeded" and s["after"]["status"] == "cancelled"
    events = (await owner.get(f"/runs/{run_id}/events")).json()["items"]
    assert [e["step_key"] for e in events if e["type"] == "step_cancelled"] == ["after"]


async def test_cancel_wakes_a_sleeping_run(owner):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 60}),
                                              ("after", "transform", {"expression": "`1`"})))
    run_id = await owner.start(wf["id"])

    async def sleeping():
        run = await owner.run(run_id)
        return steps_by_key(run)["wait"]["status"] == "running"

    await wait_for(sleeping, 10, 0.05, "the delay to start")
    assert (await owner.post(f"/runs/{run_id}/cancel")).status_code == 202
    run = await owner.wait(run_id, timeout=10)
    assert run["status"] == "cancelled"
    s = steps_by_key(run)
    assert (s["wait"]["status"], s["after"]["status"]) == ("cancelled", "cancelled")


async def test_a_failure_during_a_pause_request_still_fails_the_run(owner, world):
    """An operator's pause does not hide a failure: when a step fails while the pause is pending,
    the run ends failed (not paused), and the ready step that never started is not marked paused."""
    project = await owner.project()
    bad, ok = uniq("slowfail"), uniq("slowok")
    wf = await owner.workflow(project, {
        "nodes": [{"id": "start", "data": {"type": "webhook"}},
                  {"id": "bad", "data": {"type": "http_call", "config": {
                      "url": f"{world.url}/slow/{bad}?s=1.5", "timeout_s": 0.8, "retry": {"max_attempts": 1}}}},
                  {"id": "ok", "data": {"type": "http_call", "config": {"url": f"{world.url}/slow/{ok}?s=0.4"}}},
                  {"id": "after_ok", "data": {"type": "transform", "config": {"expression": "`1`"}}}],
        "edges": [{"source": "start", "target": "bad"}, {"source": "start", "target": "ok"},
                  {"source": "ok", "target": "after_ok"}]})
    run_id = await owner.start(wf["id"])

    async def arrived():
        return world.counts[bad] >= 1 and world.counts[ok] >= 1

    await wait_for(arrived, 10, 0.02, "both calls to arrive")
    assert (await owner.post(f"/runs/{run_id}/pause")).status_code == 202
    run = await owner.wait(run_id, ("failed", "paused", "succeeded", "cancelled"))
    assert run["status"] == "failed"
    s = steps_by_key(run)
    assert s["ok"]["status"] == "succeeded" and s["bad"]["status"] == "failed"
    assert s["after_ok"]["status"] == "pending"  # ready, never started, not "paused by operator"
    assert run["eligible_steps"] == ["bad"]
