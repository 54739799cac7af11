"""What a transaction-mode pooler breaks, and that pooler mode fixes it: through a real PgBouncer
whose few server connections are shared by many clients, a pool with asyncpg's default statement
cache fails with `prepared statement "__asyncpg_stmt_…__" does not exist`; the same pool in pooler
mode (MESHHOOK_DB_POOLER=transaction or ?pgbouncer=true) runs every transaction."""
from __future__ import annotations

import asyncio

import pytest

from app.db.engine import Database, pooler_mode, split_pooler_flag, with_pooler
from tests.pgbouncer import PgBouncer


@pytest.fixture
def tight_bouncer(admin_url):
    bouncer = PgBouncer(admin_url, pool_size=2).start()  # 8 clients on 2 server connections
    yield bouncer
    bouncer.stop()


async def hammer(db: Database) -> list[str]:
    errors: list[str] = []

    async def client(i: int) -> None:
        for j in range(25):
            try:
                async with db.service_scope() as tx:
                    assert await tx.fetchval(f"select $1::int + {j % 5}", i) == i + j % 5
                    assert await tx.fetchval("select $1::jsonb", {"i": i}) == {"i": i}
            except Exception as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(client(i) for i in range(8)))
    return errors


async def test_pooler_mode_is_what_makes_a_transaction_pooler_work(database_url, tight_bouncer):
    plain = Database(tight_bouncer.url(database_url), pool_size=4)
    try:
        broken = await hammer(plain)
    finally:
        await plain.dispose()
    assert any("prepared statement" in e for e in broken), broken[:3]

    pooled = Database(with_pooler(tight_bouncer.url(database_url), "transaction"), pool_size=4)
    try:
        assert pooled.pooler == "transaction"
        assert await hammer(pooled) == []
    finally:
        await pooled.dispose()


def test_the_pooler_mode_comes_from_the_setting_or_the_url():
    url = "postgresql://u:p@host:6543/postgres?sslmode=require"
    assert pooler_mode(url, None) == "session"
    assert pooler_mode(url + "&pgbouncer=true", None) == "transaction"
    assert pooler_mode(url + "&pgbouncer=true", "session") == "session"
    flagged = with_pooler(url, "transaction")
    assert split_pooler_flag(flagged) == (url, True)
    assert with_pooler(flagged, "session") == url  # never sent to the server as a setting
    assert Database(flagged).dsn == url
