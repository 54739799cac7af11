"""What an integrator's HTTP client sees at the edges: every JSON body follows the same rules on every
endpoint (exact integers, no duplicate keys, no BOM, JSON media types), ids in paths are standard UUIDs,
HEAD works wherever GET does, a trailing slash never redirects, content negotiation honours q=0, list
cursors are signed and bound to their query, and the docs work offline."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from tests.conftest import linear, sign_hook

PROBLEM = "application/problem+json"
BIG = b"123456789012345678901234567890"
BELOW_INT64 = b"-9223372036854775809"


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    return r.json()


async def _setup(owner):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}),
                                              ("stop", "terminate", {"status": "failed"})))
    run = await owner.wait(await owner.start(wf["id"], {"n": 1}))
    assert run["status"] == "failed"
    return project, wf, run


def _targets(project: str, wf: dict, run: dict, inner: bytes) -> dict[str, tuple[str, bytes]]:
    """The same JSON value placed in every kind of body the API takes."""
    return {
        "project": ("/projects", b'{"name": "x", "extra": ' + inner + b"}"),
        "member": (f"/projects/{project}/members",
                   b'{"user_id": "' + str(uuid.uuid4()).encode() + b'", "role": "viewer", "x": ' + inner + b"}"),
        "start": (f"/workflows/{wf['id']}/runs", b'{"input": {"a": ' + inner + b"}}"),
        "resume": (f"/runs/{run['id']}/resume", b'{"from_step": "stop", "input": {"a": ' + inner + b"}}"),
        "hook": (f"/hooks/{wf['id']}", b'{"a": ' + inner + b"}"),
    }


async def _send(owner, service, wf, path: str, body: bytes, content_type: str | None = "application/json"):
    if path.startswith("/hooks/"):
        headers = sign_hook(wf["webhook_secret"], body)
        if content_type is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = content_type
        async with httpx.AsyncClient(base_url=service.url) as anon:
            return await anon.post(path, content=body, headers=headers)
    headers = {} if content_type is None else {"Content-Type": content_type}
    return await owner.post(path, content=body, headers=headers)


async def test_integers_beyond_64_bits_are_refused_alike_everywhere_never_rounded(owner, service):
    project, wf, run = await _setup(owner)
    for inner in (BIG, BELOW_INT64):
        for name, (path, body) in _targets(project, wf, run, inner).items():
            p = problem(await _send(owner, service, wf, path, body), 422)
            assert p["errors"][0]["loc"] == ["body"], (name, p)
            assert "64-bit" in p["errors"][0]["msg"] and inner.decode() in p["errors"][0]["msg"], (name, p)
    # The largest integers that fit round-trip exactly, through the API and through a webhook.
    edge = {"max": 2**64 - 1, "min": -(2**63), "big": 2**53 + 1}
    body = json.dumps(edge).encode()
    started = await owner.post(f"/workflows/{wf['id']}/runs", content=b'{"input": ' + body + b"}",
                               headers={"Content-Type": "application/json"})
    assert started.status_code == 202, started.text
    hooked = await _send(owner, service, wf, f"/hooks/{wf['id']}", body)
    assert hooked.status_code == 202, hooked.text
    for run_id in (started.json()["id"], hooked.json()["run_id"]):
        assert json.loads((await owner.get(f"/runs/{run_id}")).content)["input"] == edge


async def test_duplicate_keys_are_refused_everywhere(owner, service):
    project, wf, run = await _setup(owner)
    bodies = {
        "/projects": b'{"name": "a", "name": "b"}',
        f"/projects/{project}/members": b'{"user_id": "' + str(uuid.uuid4()).encode()
                                        + b'", "role": "owner", "role": "viewer"}',
        f"/workflows/{wf['id']}/runs": b'{"input": {"a": {"b": 1, "b": 2}}}',
        f"/runs/{run['id']}/resume": b'{"from_step": "nope", "from_step": "stop"}',
        f"/hooks/{wf['id']}": b'{"order": 1, "order" : 2}',
    }
    for path, body in bodies.items():
        p = problem(await _send(owner, service, wf, path, body), 422)
        assert "more than once" in p["errors"][0]["msg"], (path, p)
    assert (await owner.run(run["id"]))["resumed_runs"] == []  # nothing was resumed


async def test_a_byte_order_mark_and_non_json_media_types_are_refused_alike(owner, service):
    project, wf, run = await _setup(owner)
    for name, (path, body) in _targets(project, wf, run, b"1").items():
        p = problem(await _send(owner, service, wf, path, b"\xef\xbb\xbf" + body), 422)
        assert "byte order mark" in p["errors"][0]["msg"], name
        problem(await _send(owner, service, wf, path, body, "text/plain"), 415)
        problem(await _send(owner, service, wf, path, body, "application/x-www-form-urlencoded"), 415)
        problem(await _send(owner, service, wf, path, body, None), 415)
    # application/json with parameters and application/*+json are JSON.
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await _send(owner, service, wf, "/projects", b'{"name": "typed"}', content_type)
        assert r.status_code == 201, (content_type, r.text)


async def test_non_standard_uuid_spellings_in_paths_are_refused(owner):
    _, wf, run = await _setup(owner)
    rid = uuid.UUID(run["id"])
    for spelling in (f"urn:uuid:{rid}", f"{{{rid}}}", rid.hex, str(rid).upper()[:-1] + "G"):
        p = problem(await owner.get(f"/runs/{spelling}"), 422)
        assert p["errors"][0]["loc"] == ["path", "run_id"], p
    problem(await owner.get(f"/workflows/{uuid.UUID(wf['id']).hex}"), 422)
    assert (await owner.get(f"/runs/{str(rid).upper()}")).status_code == 200  # hex digits in either case


async def test_head_works_wherever_get_does(owner, service):
    _, wf, run = await _setup(owner)
    for path in ("/healthz", "/readyz", f"/runs/{run['id']}", f"/workflows/{wf['id']}", f"/runs/{run['id']}/events",
                 "/openapi.json", "/docs"):
        got = await owner.get(path)
        head = await owner.http.head(path, headers={"Accept": "text/event-stream"})
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers.get("content-length") == got.headers.get("content-length"), path
    r = await owner.http.request("PATCH", f"/runs/{run['id']}")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


async def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_host_header(owner):
    for path in ("/projects/", "/runs/", "/healthz/"):
        r = await owner.get(path, headers={"Host": "evil.example"})
        problem(r, 404)
        assert "location" not in r.headers
    root = await owner.get("/", headers={"Host": "evil.example"})
    assert root.status_code == 307 and root.headers["location"] == "/docs"


async def test_accept_with_q_zero_for_the_stream_gets_json(owner):
    _, _, run = await _setup(owner)
    r = await owner.get(f"/runs/{run['id']}/events", headers={"Accept": "text/event-stream;q=0, application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert [e["type"] for e in r.json()["items"]][-1] == "run_failed"
    r = await owner.get(f"/runs/{run['id']}/events", headers={"Accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("text/event-stream") and "event: run_failed" in r.text


async def test_last_event_id_is_what_the_spec_says(owner, service):
    _, _, run = await _setup(owner)
    spec = (await owner.get("/openapi.json")).json()
    param = next(p for p in spec["paths"]["/runs/{run_id}/events"]["get"]["parameters"] if p["name"].lower() == "last-event-id")
    assert param["schema"]["type"] == "string" and "anyOf" not in param["schema"]  # no "null": absent or digits
    stream = {"Accept": "text/event-stream"}
    problem(await owner.get(f"/runs/{run['id']}/events", headers={**stream, "Last-Event-ID": "null"}), 422)
    all_ids = [e["id"] for e in (await owner.get(f"/runs/{run['id']}/events")).json()["items"]]
    r = await owner.get(f"/runs/{run['id']}/events", headers={**stream, "Last-Event-ID": str(all_ids[-2])})
    assert r.status_code == 200 and f"id: {all_ids[-1]}" in r.text and f"id: {all_ids[-2]}\n" not in r.text


async def test_run_list_cursors_are_signed_and_bound_to_their_query(owner):
    project, wf, _ = await _setup(owner)
    await asyncio.gather(*(owner.start(wf["id"], {"i": i}) for i in range(3)))
    query = {"project_id": project, "limit": 2}
    page = (await owner.get("/runs", params=query)).json()
    cursor = page["next_cursor"]
    assert cursor
    assert (await owner.get("/runs", params={**query, "cursor": cursor, "limit": 3})).status_code == 200
    # Another query, a changed character, or a well-formed cursor made up by the client: 422.
    problem(await owner.get("/runs", params={"workflow_id": wf["id"], "cursor": cursor}), 422)
    problem(await owner.get("/runs", params={**query, "status": "failed", "cursor": cursor}), 422)
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    problem(await owner.get("/runs", params={**query, "cursor": flipped}), 422)
    import base64

    forged = base64.urlsafe_b64encode(json.dumps(["2999-01-01T00:00:00+00:00", str(uuid.uuid4())]).encode())
    problem(await owner.get("/runs", params={**query, "cursor": forged.decode().rstrip("=")}), 422)


async def test_the_docs_work_offline(service):
    async with httpx.AsyncClient(base_url=service.url) as http:
        for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
            r = await http.get(page)
            assert r.status_code == 200 and "/openapi.json" in r.text
            assert "https://" not in r.text and "http://" not in r.text, page  # nothing from a CDN
            for asset in assets:
                assert f"/docs-assets/{asset}" in r.text
                served = await http.get(f"/docs-assets/{asset}")
                assert served.status_code == 200 and len(served.content) > 10_000, asset
