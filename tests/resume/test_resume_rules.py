"""Resume rules: permissions (also under RLS), state validation, one active child, idempotency, audit."""
from __future__ import annotations

import asyncio
import uuid

import orjson

from tests.conftest import linear
from tests.resume.test_resume_shapes import gate_call


async def failed_run(owner, world, gate=None):
    gate = gate or f"r-{uuid.uuid4().hex[:6]}"
    d = linear(("start", "webhook", {}), ("a", "transform", {"expression": "`1`"}),
               ("call", "http_call", gate_call(world, gate)), ("b", "transform", {"expression": "`2`"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed"
    return project, run, gate


async def audit_rows(db, run_id):
    async with db.acquire() as c:
        return await c.fetch("select * from audit_log where run_id = $1 and action = 'run.resume' order by id", uuid.UUID(run_id))


async def test_permissions_viewer_403_non_member_404_and_every_attempt_audited(owner, make_client, world, db):
    project, run, _ = await failed_run(owner, world)
    viewer, stranger = make_client(), make_client()
    await owner.add_member(project, viewer, "viewer")

    r = await viewer.resume(run["id"], "call")
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 403 and r.json()["request_id"]
    r = await stranger.resume(run["id"], "call")
    assert r.status_code == 404
    assert "call" not in r.text and project not in r.text  # nothing revealed
    # viewers may read a plan; strangers may not
    assert (await viewer.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "call"})).status_code == 200
    assert (await stranger.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "call"})).status_code == 404

    rows = await audit_rows(db, run["id"])
    assert [(r["outcome"], r["status_code"], str(r["actor_id"])) for r in rows] == [
        ("denied", 403, viewer.user_id), ("denied", 404, stranger.user_id)]
    for row in rows:
        assert str(row["project_id"]) == project  # recorded against the run's project
        assert row["step_key"] == "call" and row["request_id"] and row["ip"] == "127.0.0.1"
    # A member's attempt keeps its user agent; a non-member's is written without it (DESIGN §9.5).
    assert rows[0]["user_agent"].startswith("python-httpx") and rows[1]["user_agent"] is None
    # nothing was started
    assert (await owner.run(run["id"]))["resumed_runs"] == []


async def test_a_stranger_cannot_reach_the_run_through_rls(owner, make_client, world, db):
    _, run, _ = await failed_run(owner, world)
    stranger = make_client()
    claims = orjson.dumps({"sub": stranger.user_id, "role": "authenticated"}).decode()
    async with db.acquire() as c:
        async with c.transaction():
            await c.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true)", claims)
            assert await c.fetchval("select count(*) from runs where id = $1", uuid.UUID(run["id"])) == 0
            assert await c.fetchval("select count(*) from step_runs where run_id = $1", uuid.UUID(run["id"])) == 0
            # Even a hand-written resume insert is refused by the policies.
            import asyncpg
            try:
                await c.execute(
                    "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, root_run_id,"
                    " parent_run_id, created_by) select gen_random_uuid(), project_id, workflow_id, workflow_version,"
                    " 'queued', 'resume', root_run_id, id, $2 from runs where id = $1", uuid.UUID(run["id"]),
                    uuid.UUID(stranger.user_id))
            except asyncpg.InsufficientPrivilegeError:
                pass
    async with db.acquire() as c:
        assert await c.fetchval("select count(*) from runs where parent_run_id = $1", uuid.UUID(run["id"])) == 0


async def test_state_validation_409_and_422_are_audited_as_rejected(owner, world, db):
    project, run, _ = await failed_run(owner, world)
    r = await owner.resume(run["id"], "a")  # succeeded step
    assert r.status_code == 409 and r.json()["eligible_steps"] == ["call"]
    r = await owner.resume(run["id"], "b")  # pending step
    assert r.status_code == 409 and r.json()["eligible_steps"] == ["call"]
    r = await owner.resume(run["id"], "nope")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "from_step"]
    r = await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "nope"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "from_step"]
    r = await owner.post(f"/runs/{run['id']}/resume", {"from_step": "call", "colour": "red"})
    assert r.status_code == 422 and any(e["loc"][-1] == "colour" for e in r.json()["errors"])
    r = await owner.post(f"/runs/{run['id']}/resume", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = await owner.resume(run["id"], "call", reason="x" * 501)
    assert r.status_code == 422
    r = await owner.resume(run["id"], "call", workflow_version=99)
    assert r.status_code == 422
    rows = await audit_rows(db, run["id"])
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("rejected", 409)] * 2 + [("rejected", 422)] * 5
    # a succeeded run cannot be resumed at all
    ok = await owner.workflow(project, linear(("start", "webhook", {})))
    done = await owner.wait(await owner.start(ok["id"]))
    r = await owner.resume(done["id"], "start")
    assert r.status_code == 409 and r.json()["eligible_steps"] == []
    assert (await owner.get(f"/runs/{done['id']}/resume-plan", params={"from_step": "start"})).status_code == 409


async def test_twenty_concurrent_resumes_start_exactly_one_run(owner, make_client, world, db):
    # The step times out after 2 s, so the winner's child stays `running` while the others race.
    slow = {"url": f"{world.url}/slow/race-{uuid.uuid4().hex[:6]}?s=5", "timeout_s": 2, "retry": {"max_attempts": 1}}
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("call", "http_call", slow)))
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed"
    other = make_client()
    await owner.add_member(project, other, "editor")
    results = await asyncio.gather(*[(owner if i % 2 else other).resume(run["id"], "call") for i in range(20)])
    codes = sorted(r.status_code for r in results)
    assert codes == [202] + [409] * 19, codes
    winner = next(r for r in results if r.status_code == 202).json()["id"]
    for r in results:
        if r.status_code == 409:
            assert r.json()["active_run_id"] == winner
    async with db.acquire() as c:
        assert await c.fetchval("select count(*) from runs where parent_run_id = $1", uuid.UUID(run["id"])) == 1
    rows = await audit_rows(db, run["id"])
    assert len(rows) == 20
    assert sum(r["outcome"] == "accepted" for r in rows) == 1
    accepted = next(r for r in rows if r["outcome"] == "accepted")
    assert str(accepted["new_run_id"]) == winner


async def test_the_database_refuses_a_second_active_child(owner, world, db):
    """The unique index, not only the service, keeps one queued/running child per parent."""
    import asyncpg
    _, run, _ = await failed_run(owner, world)
    r = await owner.resume(run["id"], "call")
    assert r.status_code == 202
    async with db.acquire() as c:
        child = await c.fetchrow("select * from runs where id = $1", uuid.UUID(r.json()["id"]))
        if child["status"] in ("queued", "running"):
            try:
                await c.execute(
                    "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, root_run_id,"
                    " parent_run_id) values (gen_random_uuid(), $1, $2, $3, 'queued', 'resume', $4, $5)",
                    child["project_id"], child["workflow_id"], child["workflow_version"], child["root_run_id"],
                    child["parent_run_id"])
                raise AssertionError("a second active child was accepted")
            except asyncpg.UniqueViolationError:
                pass
        idx = await c.fetchval("select indexdef from pg_indexes where indexname = 'uq_runs_one_active_child'")
        assert "UNIQUE" in idx and "parent_run_id" in idx


async def test_idempotency_key_replays_and_rejects_another_body(owner, world, db):
    _, run, gate = await failed_run(owner, world)
    world.open(gate)
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    r1 = await owner.post(f"/runs/{run['id']}/resume", {"from_step": "call", "reason": "r"}, headers=key)
    assert r1.status_code == 202
    await owner.wait(r1.json()["id"])  # the child may finish; the replay is still the same response
    r2 = await owner.post(f"/runs/{run['id']}/resume", {"from_step": "call", "reason": "r"}, headers=key)
    assert r2.status_code == 202 and r2.json()["id"] == r1.json()["id"]
    r3 = await owner.post(f"/runs/{run['id']}/resume", {"from_step": "call", "reason": "other"}, headers=key)
    assert r3.status_code == 422
    async with db.acquire() as c:
        assert await c.fetchval("select count(*) from runs where parent_run_id = $1", uuid.UUID(run["id"])) == 1
    rows = await audit_rows(db, run["id"])
    assert [r["outcome"] for r in rows] == ["accepted", "accepted", "rejected"]
    assert rows[1]["detail"].get("idempotent_replay") is True


async def test_audit_view_is_for_owners_and_events_link_parent_and_child(owner, make_client, world):
    project, run, gate = await failed_run(owner, world)
    world.open(gate)
    editor = make_client()
    await owner.add_member(project, editor, "editor")
    r = await editor.resume(run["id"], "call", reason="retry")
    child = r.json()["id"]
    assert (await editor.get(f"/projects/{project}/audit")).status_code == 403
    page = (await owner.get(f"/projects/{project}/audit", params={"action": "run.resume"})).json()
    assert page["items"][0]["outcome"] == "accepted" and page["items"][0]["new_run_id"] == child
    assert page["items"][0]["actor_id"] == editor.user_id and page["items"][0]["reason"] == "retry"
    parent_events = (await owner.get(f"/runs/{run['id']}/events")).json()["items"]
    assert any(e["type"] == "run_resumed" and e["payload"]["child_run_id"] == child for e in parent_events)
    child_events = (await owner.get(f"/runs/{child}/events")).json()["items"]
    assert child_events[0]["type"] == "run_queued"
    assert any(e["type"] == "run_resumed" and e["payload"]["parent_run_id"] == run["id"] for e in child_events)


async def test_metrics_count_resumes_by_outcome(owner, world, service):
    import httpx
    _, run, _ = await failed_run(owner, world)
    await owner.resume(run["id"], "a")
    text = httpx.get(service.url + "/metrics").text
    assert 'meshhook_resume_total{outcome="rejected"}' in text
    assert "meshhook_resume_seconds_bucket" in text
