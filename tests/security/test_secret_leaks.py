"""A project's secrets never reach a viewer (DESIGN §9.2): not raw, URL-encoded, JSON-escaped,
base64 (Basic `user:secret` too) or hex, not half-cut past a mask, not through a step that only
got an upstream's echo, not through a resume, and not in the service's log.

Each run below reproduces one of the leaks of issue 11 against the echoing World upstream; every
read endpoint a viewer has (and the owner's audit log) is then searched for every form of every
secret, and for any 12-character piece of one."""
from __future__ import annotations

import json
import secrets as pysecrets
import uuid

import httpx
import pytest

from tests.conftest import linear, steps_by_key
from tests.security.leaks import leaks


@pytest.fixture
async def tenant(owner, make_client):
    project = await owner.project("leaky")
    viewer = make_client()
    await owner.add_member(project, viewer, "viewer")
    values = {
        "PW": 'Hu+nt/er2="pw\\' + pysecrets.token_hex(6),  # + / = " \ : every encoding differs
        "BASIC": "hunter2-pw-" + pysecrets.token_hex(6),  # URL userinfo → Authorization: Basic
        "LONG": pysecrets.token_urlsafe(2250),  # 3,000 characters: longer than every cut
    }
    for name, value in values.items():
        r = await owner.put(f"/projects/{project}/secrets/{name}", {"value": value})
        assert r.status_code == 204, r.text
    return type("Tenant", (), {"project": project, "viewer": viewer, "values": values})


async def _sse(service, token: str, run_id: str) -> str:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        async with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as resp:
            assert resp.status_code == 200
            return "".join([line + "\n" async for line in resp.aiter_lines()])


async def viewer_sees(service, viewer, run_id: str) -> str:
    """Everything a viewer can read about a run, as one text."""
    texts = []
    for path in (f"/runs/{run_id}", f"/runs/{run_id}/events", f"/runs/{run_id}/lineage"):
        r = await viewer.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        texts.append(r.text)
    run = r_run = (await viewer.get(f"/runs/{run_id}")).json()
    r = await viewer.get("/runs", params={"project_id": run["project_id"]})
    texts.append(r.text)
    for step in r_run["steps"]:
        r = await viewer.get(f"/runs/{run_id}/steps/{step['key']}")
        assert r.status_code == 200
        texts.append(r.text)
    texts.append(await _sse(service, viewer.token, run_id))
    return "\n".join(texts)


async def test_every_encoding_of_a_secret_is_masked_for_viewers(owner, tenant, world, service):
    tag = uuid.uuid4().hex[:8]
    port = world.httpd.server_address[1]
    wf = await owner.workflow(tenant.project, linear(
        ("start", "webhook", {}),
        # URL-encoded in the echoed url; raw in the echoed query
        ("query", "http_call", {"url": f"{world.url}/ok/{tag}-q", "query": {"pw": "{{ secrets.PW }}"}}),
        # Basic auth from URL userinfo: the upstream reflects `authorization: Basic base64(u:secret)`
        ("basic", "http_call", {"url": f"http://u:{{{{ secrets.BASIC }}}}@127.0.0.1:{port}/ok/{tag}-b"}),
        # JSON body; then a step that re-serialises it (JSON escapes) without naming secrets
        ("post", "http_call", {"method": "POST", "url": f"{world.url}/ok/{tag}-j",
                               "body": {"pw": "{{ secrets.PW }}", "long": "{{ secrets.LONG }}"}}),
        ("text", "transform", {"expression": "to_string(steps.post.body)"}),
        # an upstream that hands back what it was sent, to a step that names no secret
        ("echo", "http_call", {"url": f"{world.url}/last/{tag}-j"}),
        # an error body longer than the 2,048-byte preview cut, which once went through the
        # 3,000-character secret (now masked before the cut, so the cut lands on the mask);
        # retried once, so an attempt entry and a step_retrying event carry the preview too
        ("cut", "http_call", {"method": "POST", "url": f"{world.url}/ok/{tag}-e?status=500",
                              "body": {"pad": "x" * 1900, "long": "{{ secrets.LONG }}", "pw": "{{ secrets.PW }}"},
                              "retry": {"max_attempts": 2, "backoff_s": 0.01}}),
    ))
    run_id = await owner.start(wf["id"], {"note": "leak probe"})
    run = await owner.wait(run_id)
    assert run["status"] == "failed", run
    steps = steps_by_key(run)
    secrets = list(tenant.values.values())

    # The calls really carried the secrets (so a mask is the only thing between them and a viewer).
    sent = {r["name"]: r for r in world.requests if r["name"].startswith(tag) and r["kind"] == "ok"}
    assert sent[f"{tag}-q"]["query"]["pw"] == tenant.values["PW"]
    assert sent[f"{tag}-j"]["body"]["long"] == tenant.values["LONG"]
    assert sent[f"{tag}-b"]["headers"]["authorization"].startswith("Basic ")
    # ... and what is stored shows masks where they were.
    assert steps["basic"]["output"]["body"]["headers"]["authorization"] == "Basic ***"
    assert "***" in steps["query"]["output"]["body"]["url"] and steps["query"]["output"]["body"]["query"]["pw"] == "***"
    assert steps["echo"]["output"]["body"]["body"] == {"pw": "***", "long": "***"}
    assert "***" in steps["text"]["output"]
    cut = steps["cut"]
    assert cut["status"] == "failed" and cut["error"]["type"] == "http_error"
    assert isinstance(cut["error"]["body"], str) and cut["error"]["body"].endswith("…")  # it was cut

    seen = await viewer_sees(service, tenant.viewer, run_id)
    assert leaks(seen, secrets) == []
    detail = (await tenant.viewer.get(f"/runs/{run_id}/steps/cut")).json()
    assert len(detail["attempts"]) == 2 and "***" in json.dumps(detail["attempts"])

    # A resume copies the stored (masked) outputs: its 202 body, the child and the audit row are clean.
    r = await owner.resume(run_id, "cut", reason="retry after fixing the upstream")
    assert r.status_code == 202, r.text
    assert leaks(r.text, secrets) == []
    child = await owner.wait(r.json()["id"])
    assert leaks(await viewer_sees(service, tenant.viewer, child["id"]), secrets) == []
    audit = await owner.get(f"/projects/{tenant.project}/audit")
    assert audit.status_code == 200 and leaks(audit.text, secrets) == []

    # Nothing in the service's log either.
    assert leaks(service.log.read_text(errors="replace"), secrets) == []


async def test_an_expression_error_cut_through_a_long_secret_shows_none_of_it(owner, tenant, service):
    wf = await owner.workflow(tenant.project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": "https://example.invalid/", "headers": {"X": "{{ abs(secrets.LONG) }}"}})))
    run = await owner.wait(await owner.start(wf["id"]))
    call = steps_by_key(run)["call"]
    assert call["status"] == "failed" and call["error"]["type"] == "template_error"
    assert leaks(await viewer_sees(service, tenant.viewer, run["id"]), list(tenant.values.values())) == []


async def test_a_step_that_only_gets_a_secret_back_from_upstream_stores_a_mask(owner, tenant, world, service):
    tag = uuid.uuid4().hex[:8]
    # One workflow sends the secret; another, which never names a secret, reads the upstream's copy.
    sender = await owner.workflow(tenant.project, linear(
        ("start", "webhook", {}),
        ("send", "http_call", {"url": f"{world.url}/ok/{tag}", "headers": {"X-Api-Key": "{{ secrets.PW }}"}})))
    assert (await owner.wait(await owner.start(sender["id"])))["status"] == "succeeded"
    reader = await owner.workflow(tenant.project, linear(
        ("start", "webhook", {}),
        ("read", "http_call", {"url": f"{world.url}/last/{tag}"}),
        ("keep", "transform", {"expression": "steps.read.body.headers"})))
    run = await owner.wait(await owner.start(reader["id"]))
    assert run["status"] == "succeeded"
    assert steps_by_key(run)["keep"]["output"]["x-api-key"] == "***"
    assert leaks(await viewer_sees(service, tenant.viewer, run["id"]), list(tenant.values.values())) == []


async def test_secrets_shorter_than_8_characters_are_refused(owner):
    project = await owner.project()
    for value in ("e", "1234567"):
        r = await owner.put(f"/projects/{project}/secrets/SHORT", {"value": value})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert "1234567" not in r.text and '"input"' not in r.text  # the refusal does not echo the value
    assert (await owner.put(f"/projects/{project}/secrets/SHORT", {"value": "12345678"})).status_code == 204
