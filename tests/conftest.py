"""Session fixtures: one throwaway database (migrated once), a JWKS endpoint, the outside
world, and a real `meshhook serve` process on a socket. Tests isolate themselves by
creating their own users and projects, so nothing needs truncating between tests."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import support
from tests.support import Keys, World


def pytest_sessionstart(session) -> None:
    # Printed with -q too (pytest's own report header is not), so `python3 dev.py test` says it.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(_header_line())


def _header_line() -> str:
    """One line: which PostgreSQL the suite uses, and whether the Node.js checks can run."""
    from urllib.parse import urlsplit

    url = support.admin_url() if (os.environ.get("TEST_DATABASE_URL") or support.server_reachable()) else None
    if url is None:
        where = "an embedded server (pgserver; set TEST_DATABASE_URL to use another)"
    else:
        parts = urlsplit(url)
        source = "TEST_DATABASE_URL" if os.environ.get("TEST_DATABASE_URL") else "the local server answered"
        where = f"{parts.hostname or parts.path}:{parts.port or 5432} ({source})"
    tools = {tool: shutil.which(tool) is not None for tool in ("node", "npm", "npx")}
    node = ("node/npm: yes (TypeScript client, tsc and Redocly checks run; npx fetches packages on first use)"
            if all(tools.values()) else
            f"node/npm: MISSING ({', '.join(t for t, ok in tools.items() if not ok)}): the client checks will fail")
    return f"meshhook: throwaway databases on {where}; {node}"


# MESHHOOK_TEST_POOLER=transaction runs the suite through a real PgBouncer in transaction mode: the
# service is 2 API processes and 2 workers on one pooler (behind a round-robin proxy), the superuser
# pool of the tests goes through it too, and LISTEN goes straight to the server (MESHHOOK_LISTEN_URL).
POOLER = os.environ.get("MESHHOOK_TEST_POOLER", "")


@pytest.fixture(scope="session")
def pgbouncer(admin_url):
    from tests.pgbouncer import PgBouncer

    bouncer = PgBouncer(admin_url).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def admin_url() -> str:
    return support.admin_url()


@pytest.fixture(scope="session")
async def database_url(admin_url, tmp_path_factory):
    name = f"meshhook_test_{uuid.uuid4().hex[:10]}"
    url = await support.create_database(admin_url, name)
    from app.db.migrate import upgrade

    await asyncio.to_thread(upgrade, url)
    yield url
    await support.drop_database(admin_url, name)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def jwks_server(keys):
    srv = support.JwksServer(keys)
    keys.issuer = srv.url + "/auth/v1"
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def world():
    w = World()
    yield w
    w.close()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def service_env(database_url, jwks_server, world, request):
    # Tenant calls reach public addresses only (DESIGN §9.1); the tests' upstream is on loopback,
    # so the service opens exactly its port.
    allow = support.egress_allow(world)
    if POOLER:
        bouncer = request.getfixturevalue("pgbouncer")
        return support.service_env(bouncer.url(database_url), jwks_server.url, MESHHOOK_DB_POOLER=POOLER,
                                   MESHHOOK_LISTEN_URL=database_url, MESHHOOK_EGRESS_ALLOW=allow)
    return support.service_env(database_url, jwks_server.url, MESHHOOK_EGRESS_ALLOW=allow)


@pytest.fixture(scope="session")
def service(service_env, logs_dir):
    if POOLER:
        replicas = support.Replicas(service_env, logs_dir / "api.log", apis=2, workers=2)
        yield type("Service", (), {"url": replicas.url, "proc": replicas.apis[0][0], "log": logs_dir / "api.log",
                                   "replicas": replicas})
        replicas.close()
        return
    proc, base = support.start_api(service_env, logs_dir / "api.log")
    yield type("Service", (), {"url": base, "proc": proc, "log": logs_dir / "api.log"})
    proc.terminate()


@pytest.fixture(scope="session")
async def db(database_url, request):
    """A superuser pool for assertions and arranging state the API cannot reach."""
    from app.db.engine import init_connection

    if POOLER:  # through the pooler as well: no statement may outlive its transaction
        url = request.getfixturevalue("pgbouncer").url(database_url)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4, init=init_connection,
                                         statement_cache_size=0)
        yield pool
        await pool.close()
        return
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as c:
        await init_connection(c)
    await pool.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=init_connection)
    yield pool
    await pool.close()


class Client:
    """An API client acting as one user, over real HTTP."""

    def __init__(self, base: str, keys: Keys, user_id: str | None = None, alg: str = "HS256",
                 keepalive: bool | None = None):
        self.user_id = user_id or support.new_user()
        self.token = keys.token(self.user_id, alg)
        # Through the pooler every request opens a new connection, so the proxy spreads one user's
        # requests over both API replicas (a write on one, the next read on the other).
        keepalive = not POOLER if keepalive is None else keepalive
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30,
                                      limits=limits)

    async def post(self, path, json=None, **kw):
        return await self.http.post(path, json=json, **kw)

    async def get(self, path, **kw):
        return await self.http.get(path, **kw)

    async def put(self, path, json=None, **kw):
        return await self.http.put(path, json=json, **kw)

    async def project(self, name: str = "p") -> str:
        r = await self.post("/projects", {"name": name})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    async def add_member(self, project_id: str, user: "Client", role: str) -> None:
        r = await self.post(f"/projects/{project_id}/members", {"user_id": user.user_id, "role": role})
        assert r.status_code == 201, r.text

    async def workflow(self, project_id: str, definition: dict, slug: str | None = None) -> dict:
        r = await self.post(f"/projects/{project_id}/workflows",
                            {"slug": slug or f"wf-{uuid.uuid4().hex[:8]}", "name": "wf", "definition": definition})
        assert r.status_code == 201, r.text
        return r.json()

    async def start(self, workflow_id: str, input: dict | None = None, version: int | None = None) -> str:
        body = {"input": input or {}}
        if version:
            body["version"] = version
        r = await self.post(f"/workflows/{workflow_id}/runs", body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    async def run(self, run_id: str) -> dict:
        r = await self.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def wait(self, run_id: str, statuses=("succeeded", "failed", "paused", "cancelled"),
                   timeout: float = 20) -> dict:
        async def check():
            run = await self.run(run_id)
            return run if run["status"] in statuses else None

        return await support.wait_for(check, timeout, 0.05, f"run {run_id} to reach {statuses}")

    async def resume(self, run_id: str, from_step: str, **body):
        return await self.post(f"/runs/{run_id}/resume", {"from_step": from_step, **body})

    async def aclose(self):
        await self.http.aclose()


@pytest.fixture
async def make_client(service, keys):
    made: list[Client] = []

    def make(user_id: str | None = None, alg: str = "HS256") -> Client:
        c = Client(service.url, keys, user_id, alg)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


@pytest.fixture
async def owner(make_client) -> Client:
    return make_client()


def steps_by_key(run: dict) -> dict[str, dict]:
    return {s["key"]: s for s in run["steps"]}


def linear(*nodes: tuple[str, str, dict]) -> dict:
    """A definition from (key, type, config) tuples, chained in order."""
    ns = [{"id": k, "data": {"type": t, "config": c}} for k, t, c in nodes]
    es = [{"source": a[0], "target": b[0]} for a, b in zip(nodes, nodes[1:])]
    return {"nodes": ns, "edges": es}


def sign_hook(secret: str, body: bytes, ts: int | None = None, msg_id: str | None = None) -> dict:
    """Standard Webhooks headers for `body`, written out by hand (the spec, not the service's code):
    the key is the base64 after `whsec_`, the signature `v1,<base64 HMAC-SHA256 of id.ts.body>`."""
    ts = ts or int(time.time())
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,{sig}",
            "Content-Type": "application/json"}


__all__ = ["Client", "steps_by_key", "linear", "sign_hook", "json"]
