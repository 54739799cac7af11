"""SSE: a real streaming client follows a run from start to failure, then its resume to success,
receiving every event in order exactly once; Last-Event-ID replays only what came later."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from tests.conftest import linear


async def read_sse(base: str, token: str, run_id: str, last_event_id: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events, cur = [], {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                if line == "":
                    if "data" in cur:
                        events.append(cur)
                    cur = {}
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    cur[field] = value[1:] if value.startswith(" ") else value
    return events


async def test_stream_follows_failure_then_resume(owner, service, world):
    gate = f"sse-{uuid.uuid4().hex[:6]}"
    d = linear(("start", "webhook", {}),
               ("slow", "http_call", {"url": f"{world.url}/slow/{gate}-s?s=0.4"}),
               ("call", "http_call", {"method": "POST", "url": f"{world.url}/gate/{gate}", "retry": {"max_attempts": 1}}),
               ("done", "transform", {"expression": "steps.call.status"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run_id = await owner.start(wf["id"])
    streamed = await asyncio.wait_for(read_sse(service.url, owner.token, run_id), 30)  # open while it runs
    listed = (await owner.get(f"/runs/{run_id}/events")).json()["items"]
    # everything up to the final event, in order, exactly once (run_resumed comes after the stream ended)
    final_at = next(i for i, e in enumerate(listed) if e["type"] == "run_failed")
    assert [int(e["id"]) for e in streamed] == [e["id"] for e in listed[: final_at + 1]]
    assert [e["event"] for e in streamed] == [e["type"] for e in listed[: final_at + 1]]
    assert json.loads(streamed[-1]["data"])["type"] == "run_failed"
    assert "step_started" in [e["event"] for e in streamed]

    world.open(gate)
    r = await owner.resume(run_id, "call")
    child = r.json()["id"]
    child_stream = asyncio.create_task(read_sse(service.url, owner.token, child))
    got = await asyncio.wait_for(child_stream, 30)
    child_listed = (await owner.get(f"/runs/{child}/events")).json()["items"]
    assert [int(e["id"]) for e in got] == [e["id"] for e in child_listed]
    assert got[-1]["event"] == "run_succeeded"
    types = [e["event"] for e in got]
    assert types[0] == "run_queued" and "run_resumed" in types

    # Last-Event-ID: a reconnecting client gets only what came after
    cut = child_listed[2]["id"]
    again = await asyncio.wait_for(read_sse(service.url, owner.token, child, str(cut)), 30)
    assert [int(e["id"]) for e in again] == [e["id"] for e in child_listed if e["id"] > cut]


async def test_stream_of_someone_elses_run_is_404(owner, make_client, service):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {})))
    run_id = await owner.start(wf["id"])
    stranger = make_client()
    r = await stranger.get(f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = await owner.get(f"/runs/{run_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "abc"})
    assert r.status_code == 422
