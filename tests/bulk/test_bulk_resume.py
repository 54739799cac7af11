"""Bulk resume (DESIGN §10.3), as an operator uses it after an outage: over real HTTP, with the
loopback upstream standing in for the API that was down, and the service's in-process worker
driving the job."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import asyncpg
import httpx
import orjson
import pytest

from tests import support
from tests.conftest import linear, steps_by_key


def outage_workflow(world, tag: str) -> dict:
    """start → lookup (always fine) → charge (down until the gate opens) → receipt."""
    return linear(("start", "webhook", {}),
                  ("lookup", "http_call", {"url": f"{world.url}/ok/{tag}-lookup", "retry": {"max_attempts": 1}}),
                  ("charge", "http_call", {"method": "POST", "url": f"{world.url}/gate/{tag}-charge",
                                           "body": {"n": "{{ input.n }}"}, "retry": {"max_attempts": 1}}),
                  ("receipt", "transform", {"expression": "{n: input.n, status: steps.charge.status}"}))


async def failed_runs(client, world, n: int, tag: str | None = None) -> tuple[str, dict, list[str], str]:
    """A project, the outage workflow and n runs that failed at `charge`."""
    tag = tag or f"bulk-{uuid.uuid4().hex[:8]}"
    project = await client.project()
    wf = await client.workflow(project, outage_workflow(world, tag))
    runs = await asyncio.gather(*[client.start(wf["id"], {"n": i}) for i in range(n)])

    async def all_failed():
        r = await client.get("/runs", params={"workflow_id": wf["id"], "status": "failed", "limit": 200})
        return len(r.json()["items"]) >= n

    await support.wait_for(all_failed, 120, 0.2, f"{n} runs to fail")
    return project, wf, list(runs), tag


async def bulk(client, project: str, body: dict, **kw) -> httpx.Response:
    return await client.post(f"/projects/{project}/bulk-resumes", body, **kw)


async def wait_job(client, bulk_id: str, timeout: float = 120) -> dict:
    async def done():
        job = (await client.get(f"/bulk-resumes/{bulk_id}")).json()
        return job if job["finished_at"] is not None else None

    return await support.wait_for(done, timeout, 0.1, f"bulk resume {bulk_id} to finish")


async def test_one_bulk_call_recovers_200_runs_after_an_outage_at_the_requested_pace(owner, world, db):
    project, wf, runs, tag = await failed_runs(owner, world, 200)
    lookups_before = len(world.seen(f"{tag}-lookup"))
    assert lookups_before == 200 and len(world.seen(f"{tag}-charge")) == 200
    world.open(f"{tag}-charge")  # the upstream is fixed

    r = await bulk(owner, project, {"filter": {"workflow_id": wf["id"], "status": ["failed"], "failed_step": "charge"},
                                    "reason": "payments API is back", "max_per_second": 50})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/bulk-resumes/{job['id']}"
    assert job["status"] == "running" and job["matched"] == 200 and job["pending"] + job["accepted"] == 200
    assert sorted(i["run_id"] for i in job["items"]) == sorted(runs)
    assert job["request"]["max_per_second"] == 50 and job["request"]["reason"] == "payments API is back"

    job = await wait_job(owner, job["id"])
    assert (job["status"], job["accepted"], job["skipped"], job["rejected"], job["pending"]) == ("succeeded", 200, 0, 0, 0)
    assert all(i["outcome"] == "accepted" and i["from_step"] == "charge" and i["new_run_id"] for i in job["items"])

    children = [i["new_run_id"] for i in job["items"]]
    for child_id in children:
        child = await owner.wait(child_id, timeout=60)
        assert child["status"] == "succeeded", child
        assert child["trigger"] == "resume" and child["resumed_from_step"] == "charge"
        steps = steps_by_key(child)
        assert steps["lookup"]["reused_from"] is not None and steps["charge"]["reused_from"] is None
    # The reused step was not called again; the fixed one once more per run.
    assert len(world.seen(f"{tag}-lookup")) == lookups_before
    assert [r["status"] for r in world.seen(f"{tag}-charge")].count(200) == 200

    # Paced: one resume every 1/50 s, so the 200 new runs were created over about 4 s (less at most the
    # time one resume can take: each run's created_at is written inside its resume).
    async with db.acquire() as c:
        span = await c.fetchval("select extract(epoch from max(created_at) - min(created_at)) from runs"
                                " where id = any($1::uuid[])", [uuid.UUID(x) for x in children])
        audit = await c.fetch("select outcome, reason, run_id, actor_id from audit_log where action = 'run.resume'"
                              " and run_id = any($1::uuid[])", [uuid.UUID(x) for x in runs])
        created = await c.fetchval("select count(*) from audit_log where action = 'bulk.resume'"
                                   " and detail->>'bulk_id' = $1", job["id"])
    assert span >= 199 / 50 - 1.0, span
    # Exactly the single-resume path: one accepted audit row per run, as the job's creator, with the reason.
    assert len(audit) == 200 and {(a["outcome"], a["reason"], str(a["actor_id"])) for a in audit} == {
        ("accepted", "payments API is back", owner.user_id)}
    assert created == 1

    # Progress events: every run settled in exactly one event, the last one final.
    events = (await owner.get(f"/bulk-resumes/{job['id']}/events", params={"limit": 1000})).json()["items"]
    assert {e["type"] for e in events} == {"bulk_progress"}
    assert events[-1]["payload"]["final"] is True and events[-1]["payload"]["status"] == "succeeded"
    settled = [it["run_id"] for e in events for it in e["payload"]["items"]]
    assert sorted(settled) == sorted(runs)
    accepted = [e["payload"]["accepted"] for e in events]
    assert accepted == sorted(accepted) and accepted[-1] == 200


async def test_a_dry_run_shows_every_run_and_its_plan_and_writes_nothing(owner, world, db):
    project, wf, runs, tag = await failed_runs(owner, world, 4)
    world.open(f"{tag}-charge")
    # One run was already resumed by hand, and that resume succeeded: it is resolved.
    r = await owner.resume(runs[0], "charge")
    assert r.status_code == 202
    resolved = await owner.wait(r.json()["id"])
    assert resolved["status"] == "succeeded"

    async def counts():
        async with db.acquire() as c:
            return await c.fetchrow(
                "select (select count(*) from runs where workflow_id = $1) as runs,"
                " (select count(*) from bulk_resumes where project_id = $2) as jobs,"
                " (select count(*) from audit_log where project_id = $2) as audit,"
                " (select count(*) from run_events where project_id = $2) as events",
                uuid.UUID(wf["id"]), uuid.UUID(project))

    before = await counts()
    r = await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "reason": "preview", "dry_run": True},
                   headers={"Idempotency-Key": "dry"})
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["id"] is None and preview["status"] == "dry_run" and "location" not in r.headers
    assert (preview["matched"], preview["accepted"], preview["skipped"], preview["rejected"]) == (4, 3, 1, 0)
    items = {i["run_id"]: i for i in preview["items"]}
    assert items[runs[0]]["outcome"] == "skipped" and resolved["id"] in items[runs[0]]["why"]
    for run_id in runs[1:]:
        assert items[run_id]["outcome"] == "accepted" and items[run_id]["from_step"] == "charge"
        assert items[run_id]["plan"] == {"reuse": 2, "rerun": 2}  # start, lookup | charge, receipt
    # A step some runs cannot start from is shown per run.
    r = await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "from_step": "lookup", "reason": "x",
                                    "dry_run": True})
    assert r.status_code == 200
    rejected = [i for i in r.json()["items"] if i["outcome"] == "rejected"]
    assert len(rejected) == 3 and all("'lookup' is succeeded" in i["why"] for i in rejected)
    assert await counts() == before
    # The same key was not consumed by the dry run: a real job may use it.
    r = await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "reason": "go"}, headers={"Idempotency-Key": "dry"})
    assert r.status_code == 202


async def test_the_same_idempotency_key_returns_the_same_job_and_another_body_is_refused(owner, world, db):
    project, wf, runs, tag = await failed_runs(owner, world, 3)
    world.open(f"{tag}-charge")
    body = {"filter": {"workflow_id": wf["id"], "run_ids": runs}, "reason": "retry", "max_per_second": 1000}
    first = await bulk(owner, project, body, headers={"Idempotency-Key": "outage-42"})
    again = await bulk(owner, project, body, headers={"Idempotency-Key": "outage-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["location"] == first.headers["location"]
    twins = await asyncio.gather(*[bulk(owner, project, body, headers={"Idempotency-Key": "outage-43"})
                                   for _ in range(5)])
    assert {t.status_code for t in twins} == {202} and len({t.json()["id"] for t in twins}) == 1
    other = await bulk(owner, project, {**body, "reason": "another"}, headers={"Idempotency-Key": "outage-42"})
    assert other.status_code == 422 and other.json()["errors"][0]["loc"] == ["header", "idempotency-key"]
    job = await wait_job(owner, first.json()["id"])
    assert job["accepted"] == 3
    twin = await wait_job(owner, twins[0].json()["id"])
    assert twin["accepted"] == 0 and twin["skipped"] == 3  # the first job already resumed them
    async with db.acquire() as c:
        assert await c.fetchval("select count(*) from bulk_resumes where project_id = $1", uuid.UUID(project)) == 2
        assert await c.fetchval("select count(*) from runs where parent_run_id = any($1::uuid[])",
                                [uuid.UUID(x) for x in runs]) == 3


async def test_cancel_mid_way_stops_the_runs_not_yet_resumed(owner, world, db):
    project, wf, runs, tag = await failed_runs(owner, world, 30)
    world.open(f"{tag}-charge")
    job = (await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "reason": "slowly",
                                       "max_per_second": 4})).json()

    async def some_accepted():
        j = (await owner.get(f"/bulk-resumes/{job['id']}")).json()
        return j if j["accepted"] >= 3 else None

    await support.wait_for(some_accepted, 30, 0.05, "a few resumes")
    r = await owner.post(f"/bulk-resumes/{job['id']}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled" and r.json()["cancelled_at"]
    job = await wait_job(owner, job["id"])
    assert job["status"] == "cancelled" and job["pending"] == 0
    assert job["accepted"] < 30 and job["accepted"] + job["skipped"] == 30
    skipped = (await owner.get(f"/bulk-resumes/{job['id']}", params={"outcome": "skipped"})).json()["items"]
    assert len(skipped) == job["skipped"] and all(i["why"] == "the bulk resume was cancelled before this run was resumed" for i in skipped)
    await asyncio.sleep(0.5)  # nothing more starts after the job has ended
    async with db.acquire() as c:
        children = await c.fetch("select parent_run_id from runs where parent_run_id = any($1::uuid[])",
                                 [uuid.UUID(x) for x in runs])
    assert sorted(str(c["parent_run_id"]) for c in children) == sorted(
        i["run_id"] for i in job["items"] if i["outcome"] == "accepted")
    assert (await owner.post(f"/bulk-resumes/{job['id']}/cancel")).status_code == 409


async def test_a_second_job_over_runs_being_resumed_accepts_none_of_them_twice(owner, world, db):
    project, wf, runs, tag = await failed_runs(owner, world, 20)
    world.open(f"{tag}-charge")
    body = {"filter": {"workflow_id": wf["id"]}, "reason": "first"}
    slow = (await bulk(owner, project, {**body, "max_per_second": 10})).json()
    fast = (await bulk(owner, project, {**body, "reason": "second", "max_per_second": 1000})).json()
    assert slow["matched"] == fast["matched"] == 20
    slow, fast = await wait_job(owner, slow["id"]), await wait_job(owner, fast["id"])
    assert slow["accepted"] + fast["accepted"] == 20 and slow["skipped"] + fast["skipped"] == 20
    by_run: dict[str, list[str]] = {}
    for job in (slow, fast):
        for i in job["items"]:
            by_run.setdefault(i["run_id"], []).append(i["outcome"])
    assert all(sorted(o) == ["accepted", "skipped"] for o in by_run.values()), by_run
    async with db.acquire() as c:
        per_parent = await c.fetch("select parent_run_id, count(*) as n from runs where parent_run_id = any($1::uuid[])"
                                   " group by 1", [uuid.UUID(x) for x in runs])
    assert len(per_parent) == 20 and {p["n"] for p in per_parent} == {1}


async def test_roles_viewer_reads_but_gets_403_on_writes_and_a_non_member_gets_404(owner, make_client, world):
    project, wf, runs, tag = await failed_runs(owner, world, 2)
    viewer, editor, stranger = make_client(), make_client(), make_client()
    await owner.add_member(project, viewer, "viewer")
    await owner.add_member(project, editor, "editor")
    body = {"filter": {"workflow_id": wf["id"]}, "reason": "r", "max_per_second": 1}
    assert (await bulk(viewer, project, body)).status_code == 403
    assert (await bulk(viewer, project, {**body, "dry_run": True})).status_code == 403
    r = await bulk(stranger, project, body)
    assert r.status_code == 404 and wf["id"] not in r.text
    job = (await bulk(editor, project, body)).json()
    assert job["created_by"] == editor.user_id

    assert (await viewer.get(f"/bulk-resumes/{job['id']}")).status_code == 200
    assert (await viewer.get(f"/bulk-resumes/{job['id']}/events")).status_code == 200
    assert (await viewer.post(f"/bulk-resumes/{job['id']}/cancel")).status_code == 403
    for call in (stranger.get(f"/bulk-resumes/{job['id']}"), stranger.get(f"/bulk-resumes/{job['id']}/events"),
                 stranger.post(f"/bulk-resumes/{job['id']}/cancel"),
                 owner.get(f"/bulk-resumes/{uuid.uuid4()}")):
        r = await call
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert (await owner.post(f"/bulk-resumes/{job['id']}/cancel")).status_code == 202


async def test_bad_input_gets_a_clear_422(owner, world, db):
    project, wf, runs, _tag = await failed_runs(owner, world, 1)
    other = await owner.workflow(await owner.project(), linear(("start", "webhook", {})))
    ok = {"filter": {"workflow_id": wf["id"]}, "reason": "r"}
    cases = [
        ({**ok, "filter": {}}, ["body", "filter", "workflow_id"]),
        ({**ok, "filter": {"workflow_id": other["id"]}}, ["body", "filter", "workflow_id"]),
        ({**ok, "from_step": "nope"}, ["body", "from_step"]),
        ({**ok, "filter": {"workflow_id": wf["id"], "failed_step": "chrage"}}, ["body", "filter", "failed_step"]),
        ({**ok, "max_per_second": 0}, ["body", "max_per_second"]),
        ({**ok, "max_per_second": 1001}, ["body", "max_per_second"]),
        ({**ok, "max_per_second": 2.5}, ["body", "max_per_second"]),
        ({**ok, "workflow_version": 9}, ["body", "workflow_version"]),
        ({"filter": {"workflow_id": wf["id"]}}, ["body", "reason"]),
        ({**ok, "filter": {"workflow_id": wf["id"], "status": ["lost"]}}, ["body", "filter", "status", "0"]),
        ({**ok, "filter": {"workflow_id": wf["id"], "created_after": "yesterday"}}, ["body", "filter", "created_after"]),
        ({**ok, "filter": {"workflow_id": wf["id"], "colour": "red"}}, ["body", "filter", "colour"]),
    ]
    for body, loc in cases:
        r = await bulk(owner, project, body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert any(e["loc"][:len(loc)] == loc for e in r.json()["errors"]), (loc, r.json())
    r = await bulk(owner, project, ok, headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422

    # More than 10,000 matching runs: refused, saying how many.
    wf_id, proj = uuid.UUID(wf["id"]), uuid.UUID(project)
    async with db.acquire() as c:
        await c.execute(
            "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, root_run_id, created_by)"
            " select g.id, $1, $2, 1, 'failed', 'api', g.id, $3 from (select gen_random_uuid() as id"
            " from generate_series(1, 10001)) g", proj, wf_id, uuid.UUID(owner.user_id))
    r = await bulk(owner, project, ok)
    assert r.status_code == 422 and r.json()["matched"] == 10002 and "10002" in r.json()["detail"]
    async with db.acquire() as c:
        assert await c.fetchval("select count(*) from bulk_resumes where project_id = $1", proj) == 0
        await c.execute("delete from runs where workflow_id = $1 and trigger = 'api' and started_at is null", wf_id)


async def test_progress_streams_as_server_sent_events_until_the_job_ends(owner, world, service):
    project, wf, runs, tag = await failed_runs(owner, world, 6)
    world.open(f"{tag}-charge")
    job = (await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "reason": "sse",
                                       "max_per_second": 20})).json()
    seen: list[dict] = []
    headers = {"Accept": "text/event-stream"}
    async with owner.http.stream("GET", f"/bulk-resumes/{job['id']}/events", headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event: dict = {}
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                event["id"] = int(line[3:].strip())
            elif line.startswith("event:"):
                event["event"] = line[6:].strip()
            elif line.startswith("data:"):
                event["data"] = orjson.loads(line[5:].strip())
            elif line == "" and event:
                seen.append(event)
                event = {}
    assert seen and {e["event"] for e in seen} == {"bulk_progress"}
    assert seen[-1]["data"]["payload"]["final"] is True and seen[-1]["data"]["payload"]["accepted"] == 6
    # Last-Event-ID: a reconnecting console gets only what came after.
    middle = seen[len(seen) // 2]["id"]
    async with owner.http.stream("GET", f"/bulk-resumes/{job['id']}/events",
                                 headers={**headers, "Last-Event-ID": str(middle)}, timeout=30) as r:
        ids = [int(line[3:].strip()) async for line in r.aiter_lines() if line.startswith("id:")]
    assert ids == [e["id"] for e in seen if e["id"] > middle]
    assert isinstance(datetime.fromisoformat(seen[0]["data"]["at"]), datetime)


async def test_row_level_security_guards_the_job_tables(owner, make_client, world, db):
    """Even a hand-written statement as role `authenticated` (as through Supabase's REST API) cannot
    read another project's jobs, nor slip runs into a job someone else created."""
    project, wf, runs, _tag = await failed_runs(owner, world, 1)
    editor, stranger = make_client(), make_client()
    await owner.add_member(project, editor, "editor")
    job = (await bulk(owner, project, {"filter": {"workflow_id": wf["id"]}, "reason": "r", "max_per_second": 1})).json()

    async def as_user(user, sql: str, *args):
        claims = orjson.dumps({"sub": user.user_id, "role": "authenticated"}).decode()
        async with db.acquire() as c:
            async with c.transaction():
                await c.execute("select set_config('role', 'authenticated', true),"
                                " set_config('request.jwt.claims', $1, true)", claims)
                return await c.fetch(sql, *args)

    bulk_id = uuid.UUID(job["id"])
    for table in ("bulk_resumes", "bulk_resume_events"):
        key = "id" if table == "bulk_resumes" else "bulk_id"
        assert await as_user(stranger, f"select 1 from {table} where {key} = $1", bulk_id) == []
        assert await as_user(editor, f"select 1 from {table} where {key} = $1", bulk_id) != []
    assert await as_user(stranger, "select 1 from bulk_resume_items where bulk_id = $1", bulk_id) == []
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_user(editor, "insert into bulk_resume_items (bulk_id, position, project_id, run_id, from_step)"
                              " values ($1, 99, $2, $3, 'charge')", bulk_id, uuid.UUID(project), uuid.UUID(runs[0]))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the lease is the worker's business
        await as_user(owner, "update bulk_resumes set lease_owner = 'me' where id = $1", bulk_id)
