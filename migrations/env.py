"""Alembic environment: runs the hand-written SQL migrations over the async engine."""
from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.engine import driver_connect_args, sqlalchemy_url

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from app.db.embedded import resolve_database_url

        url = resolve_database_url()
    return sqlalchemy_url(url)


def _run(connection) -> None:
    applied: list[bool] = []
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True,
                      on_version_apply=lambda *, step, **_: applied.append(step.is_upgrade))
    with context.begin_transaction():
        context.run_migrations()
    config.attributes["upgraded"] = any(applied)


# After an upgrade, fresh planner statistics for every table in `public`: a migration can add
# indexes and rewrite policies, and plans chosen from statistics taken before (or from none, on a
# database that grew by bulk load) can be badly wrong (issue 17 saw resume p50 reach 599 ms).
# Autovacuum keeps them fresh afterwards (migration 0003 makes it analyze the run tables sooner).
_ANALYZE = """
do $$ declare t record; begin
  for t in select schemaname, tablename from pg_tables where schemaname = 'public' loop
    execute format('analyze %I.%I', t.schemaname, t.tablename);
  end loop;
end $$
"""


async def _main() -> None:
    url = config.attributes.get("database_url") or ""
    engine = create_async_engine(_url(), connect_args={"server_settings": {"application_name": "meshhook-migrate"},
                                                       **driver_connect_args(url)})
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
        if config.attributes.get("upgraded"):
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(_ANALYZE)  # simple protocol, outside any transaction
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_main())
