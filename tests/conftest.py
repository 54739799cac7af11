"""Session fixtures: one throwaway database (migrated once), a JWKS endpoint, the outside
world, and a real `meshhook serve` process on a socket. Tests isolate themselves by
creating their own users and projects, so nothing needs truncating between tests."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import support
from tests.support import Keys, World


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
def service_env(database_url, jwks_server, world):
    # Tenant calls reach public addresses only (DESIGN §9.1); the tests' upstream is on loopback,
    # so the service opens exactly its port.
    return support.service_env(database_url, jwks_server.url, MESHHOOK_EGRESS_ALLOW=support.egress_allow(world))


@pytest.fixture(scope="session")
def service(service_env, logs_dir):
    proc, base = support.start_api(service_env, logs_dir / "api.log")
    yield type("Service", (), {"url": base, "proc": proc, "log": logs_dir / "api.log"})
    proc.terminate()


@pytest.fixture(scope="session")
async def db(database_url):
    """A superuser pool for assertions and arranging state the API cannot reach."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    from app.db.engine import init_connection

    async with pool.acquire() as c:
        await init_connection(c)
    await pool.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=init_connection)
    yield pool
    await pool.close()


class Client:
    """An API client acting as one user, over real HTTP."""

    def __init__(self, base: str, keys: Keys, user_id: str | None = None, alg: str = "HS256"):
        self.user_id = user_id or support.new_user()
        self.token = keys.token(self.user_id, alg)
        self.http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

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
