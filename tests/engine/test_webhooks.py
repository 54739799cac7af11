"""Signed webhook deliveries: good signature runs the workflow; bad, missing or stale
signatures are 401; a replayed delivery id returns the same run and writes no second run."""
from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.conftest import linear, sign_hook, steps_by_key


async def _hook_workflow(owner):
    project = await owner.project()
    return await owner.workflow(project, linear(("start", "webhook", {}),
                                                ("echo", "transform", {"expression": "{order: input.order}"})))


async def test_signed_delivery_runs_the_workflow(owner, service):
    wf = await _hook_workflow(owner)
    body = json.dumps({"order": "o-42"}).encode()
    async with httpx.AsyncClient(base_url=service.url) as anon:
        r = await anon.post(f"/hooks/{wf['id']}", content=body, headers=sign_hook(wf["webhook_secret"], body))
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    run = await owner.wait(run_id)
    assert run["status"] == "succeeded"
    assert run["trigger"] == "webhook"
    assert run["input"] == {"order": "o-42"}
    assert steps_by_key(run)["echo"]["output"] == {"order": "o-42"}


async def test_bad_missing_and_stale_signatures_are_rejected(owner, service, db):
    wf = await _hook_workflow(owner)
    body = b'{"order": 1}'
    good = sign_hook(wf["webhook_secret"], body)
    stale_ts = int(time.time()) - 301
    cases = {
        "wrong secret": sign_hook("whsec_not-the-secret", body),
        "tampered body": good,  # sent with another body below
        "no headers": {"Content-Type": "application/json"},
        "no signature": {k: v for k, v in good.items() if k != "webhook-signature"},
        "no timestamp": {k: v for k, v in good.items() if k != "webhook-timestamp"},
        "no id": {k: v for k, v in good.items() if k != "webhook-id"},
        "another id": {**good, "webhook-id": "msg_someone-elses"},  # the id is signed
        "stale": sign_hook(wf["webhook_secret"], body, stale_ts),
        "future": sign_hook(wf["webhook_secret"], body, int(time.time()) + 400),  # margin: time passes while sending
        "garbage timestamp": {**good, "webhook-timestamp": "yesterday"},
    }
    async with httpx.AsyncClient(base_url=service.url) as anon:
        for what, headers in cases.items():
            sent = b'{"order": 2}' if what == "tampered body" else body
            r = await anon.post(f"/hooks/{wf['id']}", content=sent, headers=headers)
            assert r.status_code == 401, (what, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        r = await anon.post(f"/hooks/{uuid.uuid4()}", content=body, headers=good)
        assert r.status_code == 401
    assert await db.fetchval("select count(*) from runs where workflow_id = $1", uuid.UUID(wf["id"])) == 0


async def test_a_replayed_delivery_returns_the_same_run(owner, service, db):
    wf = await _hook_workflow(owner)
    body = b'{"order": "once"}'
    delivery = f"dlv-{uuid.uuid4()}"
    async with httpx.AsyncClient(base_url=service.url) as anon:
        first = await anon.post(f"/hooks/{wf['id']}", content=body,
                                headers=sign_hook(wf["webhook_secret"], body, msg_id=delivery))
        again = await anon.post(f"/hooks/{wf['id']}", content=body,
                                headers=sign_hook(wf["webhook_secret"], body, msg_id=delivery))
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    await owner.wait(first.json()["run_id"])
    assert await db.fetchval("select count(*) from runs where workflow_id = $1", uuid.UUID(wf["id"])) == 1


async def test_a_signed_delivery_with_a_non_json_body_is_422(owner, service):
    wf = await _hook_workflow(owner)
    body = b"not json"
    async with httpx.AsyncClient(base_url=service.url) as anon:
        r = await anon.post(f"/hooks/{wf['id']}", content=body, headers=sign_hook(wf["webhook_secret"], body))
    assert r.status_code == 422


async def test_concurrent_replays_of_one_delivery_make_one_run(owner, service, db):
    import asyncio

    wf = await _hook_workflow(owner)
    body = b'{"order": "race"}'
    headers = sign_hook(wf["webhook_secret"], body, msg_id=f"dlv-{uuid.uuid4()}")
    async with httpx.AsyncClient(base_url=service.url) as anon:
        answers = await asyncio.gather(*(anon.post(f"/hooks/{wf['id']}", content=body, headers=headers)
                                         for _ in range(6)))
    assert [r.status_code for r in answers] == [202] * 6, [r.text for r in answers]
    assert len({r.json()["run_id"] for r in answers}) == 1
    assert await db.fetchval("select count(*) from runs where workflow_id = $1", uuid.UUID(wf["id"])) == 1
