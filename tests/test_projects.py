"""Projects and members over real HTTP (DESIGN §6), plus what every endpoint shares: health
checks, request ids, and problem+json for every error — bad bodies, bad paths, unknown
routes, oversized and malformed bodies — never a 500."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from tests import support

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    body = resp.json()
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and "detail" in body
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def locations(body: dict) -> list[tuple]:
    return [tuple(e["loc"]) for e in body["errors"]]


@pytest.fixture
async def anon(service):
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        yield http


# ---------------------------------------------------------------- projects
async def test_creating_a_project_makes_the_caller_its_owner(owner):
    r = await owner.post("/projects", {"name": "Payments"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "Payments"
    assert body["created_by"] == owner.user_id
    assert body["role"] == "owner"
    uuid.UUID(body["id"])
    assert body["created_at"]
    listed = (await owner.get("/projects")).json()
    assert listed["next_cursor"] is None
    assert [p["id"] for p in listed["items"]] == [body["id"]]
    assert listed["items"][0] == body


async def test_the_project_list_shows_only_member_projects_with_the_callers_role(make_client):
    alice, bob = make_client(), make_client()
    a1 = await alice.project("a1")
    a2 = await alice.project("a2")
    b1 = await bob.project("b1")
    assert {p["id"] for p in (await alice.get("/projects")).json()["items"]} == {a1, a2}
    assert {p["id"] for p in (await bob.get("/projects")).json()["items"]} == {b1}
    await alice.add_member(a2, bob, "viewer")
    items = (await bob.get("/projects")).json()["items"]
    assert {p["id"]: p["role"] for p in items} == {b1: "owner", a2: "viewer"}


async def test_members_are_listed_for_members_only(make_client):
    owner, editor, viewer, stranger = make_client(), make_client(), make_client(), make_client()
    project = await owner.project()
    r = await owner.post(f"/projects/{project}/members", {"user_id": editor.user_id, "role": "editor"})
    assert r.status_code == 201, r.text
    assert r.json()["project_id"] == project and r.json()["user_id"] == editor.user_id
    assert r.json()["role"] == "editor" and r.json()["created_at"]
    await owner.add_member(project, viewer, "viewer")
    for who in (owner, editor, viewer):
        r = await who.get(f"/projects/{project}/members")
        assert r.status_code == 200, r.text
        assert {m["user_id"]: m["role"] for m in r.json()["items"]} == {
            owner.user_id: "owner", editor.user_id: "editor", viewer.user_id: "viewer"}
        assert r.json()["next_cursor"] is None
    body = assert_problem(await stranger.get(f"/projects/{project}/members"), 404)
    assert project not in body["detail"]


async def test_non_members_get_404_and_low_roles_get_403_when_adding_members(make_client):
    owner, editor, viewer, stranger = make_client(), make_client(), make_client(), make_client()
    project = await owner.project()
    await owner.add_member(project, editor, "editor")
    await owner.add_member(project, viewer, "viewer")
    newcomer = str(uuid.uuid4())
    for who in (editor, viewer):
        assert_problem(await who.post(f"/projects/{project}/members", {"user_id": newcomer, "role": "viewer"}), 403)
        # not even themselves upwards
        assert_problem(await who.post(f"/projects/{project}/members", {"user_id": who.user_id, "role": "owner"}), 403)
    assert_problem(await stranger.post(f"/projects/{project}/members", {"user_id": newcomer, "role": "viewer"}), 404)
    # a project that does not exist at all looks the same as one you cannot see
    missing = await stranger.post(f"/projects/{uuid.uuid4()}/members", {"user_id": newcomer, "role": "viewer"})
    assert_problem(missing, 404)
    members = (await owner.get(f"/projects/{project}/members")).json()["items"]
    assert newcomer not in {m["user_id"] for m in members}
    assert {m["user_id"]: m["role"] for m in members}[viewer.user_id] == "viewer"


async def test_owners_change_roles_and_cannot_demote_themselves(make_client):
    owner, member = make_client(), make_client()
    project = await owner.project()
    await owner.add_member(project, member, "viewer")
    await owner.add_member(project, member, "editor")
    roles = {m["user_id"]: m["role"] for m in (await owner.get(f"/projects/{project}/members")).json()["items"]}
    assert roles == {owner.user_id: "owner", member.user_id: "editor"}
    body = assert_problem(await owner.post(f"/projects/{project}/members",
                                           {"user_id": owner.user_id, "role": "viewer"}), 422)
    assert ("body", "role") in locations(body)
    # a second owner may be appointed, and can then manage members
    await owner.add_member(project, member, "owner")
    third = str(uuid.uuid4())
    r = await member.post(f"/projects/{project}/members", {"user_id": third, "role": "viewer"})
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------- validation → 422 problem+json
@pytest.mark.parametrize("body,locs", [
    ({}, [("body", "name")]),
    ({"name": ""}, [("body", "name")]),
    ({"name": "x" * 201}, [("body", "name")]),
    ({"name": 42}, [("body", "name")]),
    ({"name": "ok", "owner": "me"}, [("body", "owner")]),
])
async def test_a_bad_project_body_is_422_with_field_locations(owner, body, locs):
    problem = assert_problem(await owner.post("/projects", body), 422)
    assert problem["errors"], problem
    for loc in locs:
        assert loc in locations(problem), problem["errors"]
    assert all(e["msg"] for e in problem["errors"])


async def test_a_bad_member_body_lists_every_problem(owner):
    project = await owner.project()
    problem = assert_problem(await owner.post(f"/projects/{project}/members",
                                              {"user_id": "not-a-uuid", "role": "admin"}), 422)
    assert {("body", "user_id"), ("body", "role")} <= set(locations(problem))
    problem = assert_problem(await owner.post(f"/projects/{project}/members", {}), 422)
    assert {("body", "user_id"), ("body", "role")} <= set(locations(problem))


@pytest.mark.parametrize("path", ["/projects/not-a-uuid/members", "/projects/123/members",
                                  "/projects/%27%3B%20drop%20table%20projects%3B--/members"])
async def test_a_malformed_uuid_in_the_path_is_422(owner, path):
    problem = assert_problem(await owner.get(path), 422)
    assert ("path", "project_id") in locations(problem)
    problem = assert_problem(await owner.post(path, {"user_id": str(uuid.uuid4()), "role": "viewer"}), 422)
    assert ("path", "project_id") in locations(problem)


@pytest.mark.parametrize("content", [
    b"{not json",
    b'{"name": "x"',
    b"",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'"just a string"',
    b"null",
    b'{"name": "x"} trailing',
])
async def test_a_body_that_is_not_a_json_object_is_422_not_500(owner, content):
    r = await owner.post("/projects", content=content, headers={"Content-Type": "application/json"})
    assert_problem(r, 422)


async def test_deeply_nested_json_is_a_4xx_not_500(owner):
    depth = 100_000
    r = await owner.post("/projects", content=b"[" * depth + b"]" * depth,
                         headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith(PROBLEM)


async def test_a_project_name_the_database_cannot_store_is_422_not_500(owner):
    assert_problem(await owner.post("/projects", {"name": "nul\u0000byte"}), 422)


async def test_a_body_without_a_json_content_type_is_not_a_500(owner):
    r = await owner.post("/projects", content=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith(PROBLEM)


# ---------------------------------------------------------------- size limit
async def test_a_body_over_the_limit_is_413_with_a_declared_length(owner):
    big = json.dumps({"name": "x" * (1024 * 1024 + 10)}).encode()
    r = await owner.post("/projects", content=big, headers={"Content-Type": "application/json"})
    body = assert_problem(r, 413)
    assert body["instance"] == "/projects"


async def test_a_streamed_body_over_the_limit_is_413(owner):
    async def chunks():
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    # no Content-Length: the limit must hold while the body streams in
    r = await owner.post("/projects", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413)


async def test_a_body_just_under_the_limit_is_not_rejected_for_size(owner):
    # Just under 1 MiB: the size is fine, so what answers is the ordinary validation (name too long).
    body = json.dumps({"name": "x" * (1024 * 1024 - 100)}).encode()
    assert len(body) <= 1024 * 1024
    problem = assert_problem(await owner.post("/projects", content=body,
                                              headers={"Content-Type": "application/json"}), 422)
    assert ("body", "name") in locations(problem)


# ---------------------------------------------------------------- routing, health, request ids
async def test_an_unknown_path_is_404_problem_json(anon, owner):
    body = assert_problem(await anon.get("/no/such/thing"), 404)
    assert body["instance"] == "/no/such/thing"
    assert_problem(await owner.get("/projects/x/y/z"), 404)


async def test_a_wrong_method_is_405_problem_json(owner):
    assert_problem(await owner.http.delete("/projects"), 405)


async def test_health_endpoints(anon):
    live = await anon.get("/healthz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert live.headers["x-request-id"] and ready.headers["x-request-id"]


async def test_every_response_carries_a_request_id_and_an_incoming_one_is_honoured(anon, owner):
    responses = [await anon.get("/healthz"), await anon.get("/projects"), await owner.get("/projects"),
                 await anon.get("/nowhere"), await owner.post("/projects", {}),
                 await owner.get("/projects/bad/members")]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), "each request gets its own id"

    mine = f"req-{uuid.uuid4().hex}"
    ok = await owner.get("/projects", headers={"X-Request-ID": mine})
    assert ok.headers["x-request-id"] == mine
    failed = await anon.get("/projects", headers={"X-Request-ID": mine})
    assert failed.headers["x-request-id"] == mine
    assert failed.json()["request_id"] == mine
    # an unreasonable incoming id is replaced, not echoed
    huge = "x" * 500
    r = await anon.get("/healthz", headers={"X-Request-ID": huge})
    assert r.headers["x-request-id"] and r.headers["x-request-id"] != huge


async def test_the_request_id_is_in_the_json_log(service, owner):
    mine = f"log-{uuid.uuid4().hex}"
    await owner.get("/projects", headers={"X-Request-ID": mine})

    async def logged():
        for line in service.log.read_text(errors="replace").splitlines():
            if mine in line:
                return json.loads(line)
        return None

    record = await support.wait_for(logged, timeout=5, what="the request's log line")
    assert record["request_id"] == mine


class TcpProxy:
    """A loopback TCP proxy to Postgres that the test can cut and restore."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.server: asyncio.AbstractServer | None = None
        self.port = support.free_port()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        if self.server is not None and self.server.is_serving():
            await self.cut()


async def test_readyz_is_503_while_the_database_is_unreachable_and_200_again_after(
        database_url, jwks_server, logs_dir):
    from urllib.parse import urlsplit

    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname, parts.port or 5432)
    await proxy.start()
    proxied = database_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}", 1)
    env = support.service_env(proxied, jwks_server.url, MESHHOOK_DB_CONNECT_TIMEOUT_S="1")
    proc = None
    try:
        # start_api blocks while it waits for /readyz; the proxy needs this loop, so wait in a thread
        proc, base = await asyncio.to_thread(support.start_api, env, logs_dir / "readyz.log", worker=False)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.get("/readyz")).status_code == 200
            await proxy.cut()
            r = await http.get("/readyz")
            body = assert_problem(r, 503)
            assert r.headers.get("retry-after")
            assert body["instance"] == "/readyz"
            assert (await http.get("/healthz")).status_code == 200  # liveness does not depend on the DB
            await proxy.start()

            async def ready():
                return (await http.get("/readyz")).status_code == 200

            await support.wait_for(ready, timeout=15, interval=0.1, what="readyz to recover")
    finally:
        if proc is not None:
            await asyncio.to_thread(proc.terminate)  # the proxy (this loop) carries its goodbyes
        await proxy.close()


async def test_a_new_project_and_its_owner_row_are_in_the_database(db, owner):
    project = await owner.project("db-check")
    rows = await db.fetch("select p.name, m.user_id::text, m.role from projects p"
                          " join project_members m on m.project_id = p.id where p.id = $1", uuid.UUID(project))
    assert [tuple(r) for r in rows] == [("db-check", owner.user_id, "owner")]
