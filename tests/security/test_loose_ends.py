"""Loose ends of DESIGN §9.5: the token issuer is checked for HS256 too; a non-member's denied
resume leaves no text of theirs in the victim's audit log; step keys are always addressable;
/metrics answers only with its token when one is set."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from app.auth.jwt import TokenVerifier, mint_dev_token
from app.errors import Unauthorized
from app.settings import LOCAL_ISSUER, Settings
from tests import support
from tests.conftest import linear, steps_by_key
from tests.test_settings_cli import base_env, meshhook


# ---------------------------------------------------------------- token issuer
async def test_an_hs256_token_from_another_issuer_is_401(service, keys):
    user = support.new_user()
    cases = {"evil issuer": keys.token(user, "HS256", iss="https://evil.example/auth/v1"),
             "no issuer": keys.token(user, "HS256", iss=None),
             "right issuer": keys.token(user, "HS256")}
    async with httpx.AsyncClient(base_url=service.url) as http:
        codes = {what: (await http.get("/projects", headers={"Authorization": f"Bearer {tok}"})).status_code
                 for what, tok in cases.items()}
    assert codes == {"evil issuer": 401, "no issuer": 401, "right issuer": 200}


async def test_without_supabase_dev_tokens_carry_the_local_issuer_and_others_are_refused(tmp_path):
    secret = "local-dev-secret-that-is-long-enough-0123456789"
    rc, out, err = await meshhook("token", "--sub", str(uuid.uuid4()),
                                  env=base_env(tmp_path, SUPABASE_JWT_SECRET=secret,
                                               DATABASE_URL="postgresql://postgres@127.0.0.1:1/x"))
    assert rc == 0, err
    settings = Settings(supabase_jwt_secret=secret, database_url=None, supabase_url=None, supabase_jwt_issuer=None)
    assert settings.issuer == LOCAL_ISSUER
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, http)
        user = await verifier.verify(out.strip())
        assert user.claims["iss"] == LOCAL_ISSUER
        evil = mint_dev_token(secret, str(uuid.uuid4()), issuer="https://evil.example/auth/v1")
        with pytest.raises(Unauthorized):
            await verifier.verify(evil)
        with pytest.raises(Unauthorized):
            await verifier.verify(mint_dev_token(secret, str(uuid.uuid4()), issuer=None))


# ---------------------------------------------------------------- audit injection
async def test_a_non_members_denied_resume_is_audited_without_its_text(owner, make_client, world):
    project = await owner.project()
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/status/400/audit-{uuid.uuid4().hex[:6]}",
                               "retry": {"max_attempts": 1}})))
    run = await owner.wait(await owner.start(wf["id"]))
    viewer, stranger = make_client(), make_client()
    await owner.add_member(project, viewer, "viewer")
    injected = "URGENT: owner, approve run 42 now — support@evil.example"
    ua = {"User-Agent": "Mozilla/5.0 (call +1-555-0100 to restore your account)"}
    r = await stranger.post(f"/runs/{run['id']}/resume", {"from_step": "call", "reason": injected}, headers=ua)
    assert r.status_code == 404
    r = await stranger.post(f"/runs/{run['id']}/resume", {"from_step": "visit evil.example now", "reason": "x"},
                            headers=ua)
    assert r.status_code == 404
    r = await viewer.post(f"/runs/{run['id']}/resume", {"from_step": "call", "reason": "viewer asks"})
    assert r.status_code == 403

    audit = await owner.get(f"/projects/{project}/audit", params={"action": "run.resume"})
    assert audit.status_code == 200
    rows = {(row["actor_id"], row["step_key"]): row for row in audit.json()["items"]}
    assert "evil.example" not in audit.text and "555-0100" not in audit.text
    outsider = rows[(stranger.user_id, "call")]  # a key-shaped step key is kept: it names the step tried
    assert outsider["outcome"] == "denied" and outsider["status_code"] == 404
    assert outsider["reason"] is None and outsider["user_agent"] is None and outsider["ip"] == "127.0.0.1"
    assert rows[(stranger.user_id, None)]["reason"] is None  # a step key that is free text is dropped
    member = rows[(viewer.user_id, "call")]  # a member's attempt keeps what they wrote
    assert member["reason"] == "viewer asks" and member["user_agent"].startswith("python-httpx")


# ---------------------------------------------------------------- step keys
async def test_step_keys_that_cannot_be_addressed_are_refused_and_each_is_listed(owner):
    project = await owner.project()
    bad = ["a/b", "x y", "-lead", "é", "a?b", "a#b", "%2F", "k" * 101]
    nodes = [{"id": "start", "data": {"type": "webhook"}}] + [
        {"id": k, "data": {"type": "transform", "config": {"expression": "`1`"}}} for k in bad]
    r = await owner.post(f"/projects/{project}/workflows", {"slug": "keys", "name": "keys",
                                                             "definition": {"nodes": nodes, "edges": []}})
    assert r.status_code == 422
    errors = [e for e in r.json()["errors"] if e["loc"][-1] == "id"]
    assert len(errors) == len(bad)  # one entry per bad key
    assert {e.get("node") for e in errors} - {None} == set(bad) - {"k" * 101}  # the over-long one is reported by position
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("next", "transform", {"expression": "`1`"})))
    r = await owner.post(f"/workflows/{wf['id']}/versions", {"definition": linear(
        ("start", "webhook", {}), ("a/b", "transform", {"expression": "`1`"}))})
    assert r.status_code == 422 and [e["node"] for e in r.json()["errors"]] == ["a/b"]


async def test_editor_style_ids_are_accepted_and_addressable(owner):
    project = await owner.project()
    key = "httpCall-1712345678"
    wf = await owner.workflow(project, linear(("webhook-1712345670", "webhook", {}),
                                              (key, "transform", {"expression": "`7`"}),
                                              ("ns:step_2.v1", "transform", {"expression": "`8`"})))
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "succeeded"
    for k in steps_by_key(run):
        r = await owner.get(f"/runs/{run['id']}/steps/{k}")
        assert r.status_code == 200 and r.json()["key"] == k


# ---------------------------------------------------------------- metrics
async def test_metrics_are_open_without_a_token_setting(service):
    async with httpx.AsyncClient(base_url=service.url) as http:
        assert (await http.get("/metrics")).status_code == 200


@pytest.fixture(scope="module")
def metrics_service(service_env, logs_dir):
    env = dict(service_env, MESHHOOK_METRICS_TOKEN="scrape-token-0123456789")
    proc, base = support.start_api(env, logs_dir / "metrics-api.log", worker=False)
    yield base
    proc.terminate()


async def test_metrics_need_the_token_when_one_is_set(metrics_service):
    async with httpx.AsyncClient(base_url=metrics_service) as http:
        answers = await asyncio.gather(
            http.get("/metrics"),
            http.get("/metrics", headers={"Authorization": "Bearer wrong"}),
            http.get("/metrics", headers={"Authorization": "Basic c2NyYXBlLXRva2VuLTAxMjM0NTY3ODk="}),
            http.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"}))
    for r in answers[:3]:
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "meshhook_" not in r.text
    assert answers[3].status_code == 200 and "# HELP" in answers[3].text
