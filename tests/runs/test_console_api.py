"""The run console's API: lists with filters and keyset pagination, step detail, lineage, events."""
from __future__ import annotations

import asyncio
import uuid

from tests.conftest import linear


async def test_list_runs_filters_and_paginates_without_gaps_or_duplicates(owner, make_client):
    project = await owner.project()
    wf_a = await owner.workflow(project, linear(("start", "webhook", {})))
    wf_b = await owner.workflow(project, linear(("start", "webhook", {}), ("t", "terminate", {"status": "failed"})))
    ids_a = [await owner.start(wf_a["id"], {"i": i}) for i in range(5)]
    ids_b = [await owner.start(wf_b["id"], {"i": i}) for i in range(3)]
    for rid in ids_a + ids_b:
        await owner.wait(rid)

    seen, cursor = [], None
    while True:
        params = {"project_id": project, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await owner.get("/runs", params=params)).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids_a + ids_b))  # newest first, each exactly once

    page = (await owner.get("/runs", params={"workflow_id": wf_b["id"]})).json()
    assert [r["id"] for r in page["items"]] == list(reversed(ids_b)) and page["next_cursor"] is None
    page = (await owner.get("/runs", params={"project_id": project, "status": "failed"})).json()
    assert {r["id"] for r in page["items"]} == set(ids_b)
    first = (await owner.run(ids_a[0]))["created_at"]
    page = (await owner.get("/runs", params={"project_id": project, "created_after": first})).json()
    assert ids_a[0] not in {r["id"] for r in page["items"]} and len(page["items"]) == 7
    page = (await owner.get("/runs", params={"project_id": project, "limit": 8})).json()
    assert len(page["items"]) == 8 and page["next_cursor"] is None  # exact fit: no empty next page

    # without a project filter, only runs of the caller's projects
    stranger = make_client()
    assert (await stranger.get("/runs")).json()["items"] == []
    assert (await stranger.get("/runs", params={"project_id": project})).status_code == 404
    for bad in ({"limit": 0}, {"limit": 201}, {"cursor": "garbage!"}, {"status": "done"}, {"project_id": "x"}):
        r = await owner.get("/runs", params=bad)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), bad


async def test_run_detail_step_detail_and_non_members(owner, make_client, world):
    project = await owner.project()
    d = linear(("start", "webhook", {}),
               ("call", "http_call", {"url": f"{world.url}/flaky/sd-{uuid.uuid4().hex[:6]}?fail=1",
                                      "retry": {"max_attempts": 3, "backoff_s": 0.01}}),
               ("t", "transform", {"expression": "steps.call.status"}))
    run = await owner.wait(await owner.start(wf_id := (await owner.workflow(project, d))["id"]))
    assert run["status"] == "succeeded"
    assert [s["key"] for s in run["steps"]] == ["start", "call", "t"]
    for field in ("key", "type", "status", "attempt", "input", "output", "error", "started_at", "finished_at",
                  "reused_from", "eligible_for_resume"):
        assert field in run["steps"][0]
    step = (await owner.get(f"/runs/{run['id']}/steps/call")).json()
    assert step["attempt"] == 2 and step["status"] == "succeeded"
    assert [a["attempt"] for a in step["attempts"]] == [1, 2]
    assert step["attempts"][0]["error"]["status"] == 500
    assert (await owner.get(f"/runs/{run['id']}/steps/nope")).status_code == 404
    stranger = make_client()
    for path in (f"/runs/{run['id']}", f"/runs/{run['id']}/steps/call", f"/runs/{run['id']}/lineage",
                 f"/runs/{run['id']}/events", f"/workflows/{wf_id}"):
        r = await stranger.get(path)
        assert r.status_code == 404 and r.json()["status"] == 404, path
    assert (await owner.get(f"/runs/{uuid.uuid4()}")).status_code == 404
    assert (await owner.get("/runs/not-a-uuid")).status_code == 422


async def test_events_list_pages_with_after(owner):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "`1`"})))
    run = await owner.wait(await owner.start(wf["id"]))
    events = (await owner.get(f"/runs/{run['id']}/events")).json()["items"]
    types = [e["type"] for e in events]
    assert types[0] == "run_queued" and types[1] == "run_started" and types[-1] == "run_succeeded"
    assert types.count("step_succeeded") == 2
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    later = (await owner.get(f"/runs/{run['id']}/events", params={"after": ids[2]})).json()["items"]
    assert [e["id"] for e in later] == ids[3:]


async def test_many_open_streams_share_one_listener(owner, service, db):
    """A hundred SSE clients on a sleeping run hold no pooled connection while they wait."""
    import httpx
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("wait", "delay", {"seconds": 4})))
    run_id = await owner.start(wf["id"])
    headers = {"Authorization": f"Bearer {owner.token}", "Accept": "text/event-stream"}
    opened = asyncio.Event()
    count = 0

    async def hold(client):
        nonlocal count
        async with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as resp:
            assert resp.status_code == 200
            count += 1
            if count == 100:
                opened.set()
            async for _ in resp.aiter_lines():
                pass

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as client:
        tasks = [asyncio.create_task(hold(client)) for _ in range(100)]
        await asyncio.wait_for(opened.wait(), 20)
        await asyncio.sleep(0.3)
        async with db.acquire() as c:
            api_conns = await c.fetchval(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and application_name in ('meshhook-api', 'meshhook-stream')")  # this suite's database only
        assert api_conns <= 21, api_conns  # pool (10 + overflow 10) + one listener, not one per stream
        await asyncio.wait_for(asyncio.gather(*tasks), 30)  # every stream ends when the run succeeds
    assert (await owner.run(run_id))["status"] == "succeeded"
