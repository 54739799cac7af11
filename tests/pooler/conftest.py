"""A database of its own, migrated through a real PgBouncer in transaction mode, with two API
replicas and two workers on that pooler (LISTEN straight to the server via MESHHOOK_LISTEN_URL)."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests import support
from tests.conftest import Client
from tests.pgbouncer import PgBouncer


class Pooled:
    direct_url: str  # the database itself (what MESHHOOK_LISTEN_URL points at)
    pooled_url: str  # the same database through PgBouncer
    bouncer: PgBouncer
    env: dict
    replicas: support.Replicas
    logs: Path
    pool: asyncpg.Pool  # superuser, direct


@pytest.fixture(scope="package")  # the replicas stop when the pooler tests are done
async def pooled(admin_url, pgbouncer, jwks_server, logs_dir, world):
    p = Pooled()
    name = f"meshhook_pooled_{uuid.uuid4().hex[:8]}"
    p.direct_url = await support.create_database(admin_url, name)
    p.bouncer = pgbouncer
    p.pooled_url = pgbouncer.url(p.direct_url)
    p.logs = logs_dir
    from app.db.engine import init_connection, with_pooler
    from app.db.migrate import upgrade

    # `meshhook migrate` works through the transaction pooler too
    await asyncio.to_thread(upgrade, with_pooler(p.pooled_url, "transaction"))
    p.env = support.service_env(p.pooled_url, jwks_server.url, MESHHOOK_DB_POOLER="transaction",
                                MESHHOOK_LISTEN_URL=p.direct_url, MESHHOOK_EGRESS_ALLOW=support.egress_allow(world))
    p.pool = await asyncpg.create_pool(p.direct_url, min_size=1, max_size=4, init=init_connection)
    p.replicas = await asyncio.to_thread(support.Replicas, p.env, logs_dir / "pooled.log", apis=2, workers=2)
    try:
        yield p
    finally:
        await asyncio.to_thread(p.replicas.close)
        await p.pool.close()
        await support.drop_database(admin_url, name)


@pytest.fixture
async def pooled_client(pooled, keys):
    """make(replica) → a Client talking to API replica 0 or 1 (or, with None, to the round-robin address)."""
    made: list[Client] = []

    def make(replica: int | None = None, user_id: str | None = None) -> Client:
        base = pooled.replicas.url if replica is None else pooled.replicas.api_urls[replica]
        c = Client(base, keys, user_id, keepalive=replica is not None)  # a new connection per request on the proxy
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()
