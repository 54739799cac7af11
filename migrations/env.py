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
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = config.attributes.get("database_url") or ""
    engine = create_async_engine(_url(), connect_args={"server_settings": {"application_name": "meshhook-migrate"},
                                                       **driver_connect_args(url)})
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_main())
