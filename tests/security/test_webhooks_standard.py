"""Webhook replay (DESIGN §9.4): deliveries follow Standard Webhooks. A signed webhook-id gives
one run however often it is replayed; the same id with another body is a 409, never silently
dropped; a captured request cannot claim another id; old signatures expire after 5 minutes; a
sender may sign with several secrets at once; any Standard Webhooks library's signature works."""
from __future__ import annotations

import base64
import datetime
import json
import secrets as pysecrets
import time
import uuid

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from app.hooks.service import secret_key
from tests.conftest import linear, sign_hook


@pytest.fixture
async def hook(owner, service):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}),
                                              ("echo", "transform", {"expression": "input"})))
    async with httpx.AsyncClient(base_url=service.url) as anon:
        yield type("Hook", (), {"wf": wf, "secret": wf["webhook_secret"], "anon": anon,
                                "url": f"/hooks/{wf['id']}"})


async def _runs(db, wf_id: str) -> int:
    return await db.fetchval("select count(*) from runs where workflow_id = $1", uuid.UUID(wf_id))


def test_the_secret_is_whsec_and_standard_base64_of_32_bytes(hook):
    assert hook.secret.startswith("whsec_")
    assert len(base64.b64decode(hook.secret.removeprefix("whsec_"), validate=True)) == 32


async def test_replays_of_one_delivery_give_one_run_and_another_body_is_409(hook, owner, db):
    body = b'{"order": "order-101"}'
    headers = sign_hook(hook.secret, body, msg_id="order-101")
    answers = [await hook.anon.post(hook.url, content=body, headers=headers) for _ in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 202]
    assert len({r.json()["run_id"] for r in answers}) == 1
    assert [r.json()["duplicate"] for r in answers] == [False, True, True]
    # The same id, re-signed a little later with the same body: still that run.
    later = await hook.anon.post(hook.url, content=body, headers=sign_hook(hook.secret, body, msg_id="order-101"))
    assert later.status_code == 202 and later.json()["run_id"] == answers[0].json()["run_id"]
    # The same id with another body is refused out loud, not dropped.
    other = b'{"order": "order-101", "amount": 1000000}'
    r = await hook.anon.post(hook.url, content=other, headers=sign_hook(hook.secret, other, msg_id="order-101"))
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert await _runs(db, hook.wf["id"]) == 1
    assert (await owner.wait(answers[0].json()["run_id"]))["input"] == {"order": "order-101"}


async def test_a_captured_request_cannot_claim_another_id(hook, db):
    body = b'{"order": "order-7"}'
    captured = sign_hook(hook.secret, body, msg_id="order-7")
    r = await hook.anon.post(hook.url, content=body, headers={**captured, "webhook-id": "order-8"})
    assert r.status_code == 401
    assert await _runs(db, hook.wf["id"]) == 0
    # so the real order-8 is not pre-empted
    body8 = b'{"order": "order-8"}'
    r = await hook.anon.post(hook.url, content=body8, headers=sign_hook(hook.secret, body8, msg_id="order-8"))
    assert r.status_code == 202 and r.json()["duplicate"] is False


async def test_the_timestamp_tolerance_is_five_minutes(hook):
    body = b'{"t": 1}'
    now = int(time.time())
    for offset, expected in ((-240, 202), (240, 202), (-330, 401), (330, 401)):
        r = await hook.anon.post(hook.url, content=body, headers=sign_hook(hook.secret, body, ts=now + offset))
        assert r.status_code == expected, (offset, r.text)
    # A captured request replayed past the window is refused, even with its original id.
    old = sign_hook(hook.secret, body, ts=now - 301, msg_id="late")
    assert (await hook.anon.post(hook.url, content=body, headers=old)).status_code == 401


async def test_several_signatures_let_a_sender_rotate_secrets(hook):
    body = b'{"rotating": true}'
    good = sign_hook(hook.secret, body)
    stale = sign_hook("whsec_" + base64.b64encode(pysecrets.token_bytes(32)).decode(), body,
                      ts=int(good["webhook-timestamp"]), msg_id=good["webhook-id"])
    both = f"{stale['webhook-signature']} v2,whatever {good['webhook-signature']}"
    r = await hook.anon.post(hook.url, content=body, headers={**good, "webhook-signature": both})
    assert r.status_code == 202, r.text
    only_stale = {**good, "webhook-signature": stale["webhook-signature"]}
    assert (await hook.anon.post(hook.url, content=body, headers=only_stale)).status_code == 401


async def test_a_standard_webhooks_library_signature_is_accepted(hook):
    body = json.dumps({"from": "svix-style sender"})
    msg_id, ts = f"msg_{uuid.uuid4().hex}", datetime.datetime.now(tz=datetime.timezone.utc)
    signature = Webhook(hook.secret).sign(msg_id, ts, body)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": signature,
               "content-type": "application/json"}
    r = await hook.anon.post(hook.url, content=body.encode(), headers=headers)
    assert r.status_code == 202, r.text


async def test_the_old_meshhook_headers_are_not_accepted(hook):
    import hashlib
    import hmac

    body = b'{"old": true}'
    ts = str(int(time.time()))
    sig = hmac.new(hook.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    r = await hook.anon.post(hook.url, content=body, headers={"X-MeshHook-Signature": f"sha256={sig}",
                                                              "X-MeshHook-Timestamp": ts,
                                                              "X-MeshHook-Delivery": "d-1"})
    assert r.status_code == 401 and "webhook-id" in r.json()["detail"]


def test_secrets_of_older_workflows_keep_their_key():
    raw = pysecrets.token_bytes(32)
    legacy = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")  # how they were minted
    standard = "whsec_" + base64.b64encode(raw).decode()
    assert secret_key(legacy) == secret_key(standard) == raw
