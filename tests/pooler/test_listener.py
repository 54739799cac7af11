"""The one listener helper (app/db/listener.py) the worker and the event streams share: it hands
notifications to its handlers, reconciles after every reconnect, and notices when a listen URL
accepts LISTEN but delivers nothing — what a transaction-mode pooler does to LISTEN."""
from __future__ import annotations

import asyncio
import logging

import asyncpg

from app.db.listener import Listener, listen_dsn
from tests import support


async def test_notifications_reach_the_handlers_and_every_reconnect_reconciles(database_url):
    got: list[str] = []
    reconciles: list[int] = []
    listener = Listener(database_url, {"meshhook_test_chan": got.append}, application_name="meshhook-test-listen",
                        on_connect=lambda: reconciles.append(1), check_every_s=0.3)
    listener.start()
    admin = await asyncpg.connect(database_url)
    try:
        await asyncio.wait_for(listener.connected.wait(), 20)
        await admin.execute("select pg_notify('meshhook_test_chan', 'one')")
        await support.wait_for(lambda: asyncio.sleep(0, got == ["one"]), 10, 0.02, "the first notification")

        pid = await admin.fetchval("select pid from pg_stat_activity where application_name = 'meshhook-test-listen'")
        assert await admin.fetchval("select pg_terminate_backend($1)", pid)

        async def reconnected():
            return listener.connects == 2 and listener.connected.is_set()

        await support.wait_for(reconnected, 20, 0.05, "the listener to reconnect")
        assert len(reconciles) == 2  # the owner re-reads its table after each (re)connect
        await admin.execute("select pg_notify('meshhook_test_chan', 'two')")
        await support.wait_for(lambda: asyncio.sleep(0, got == ["one", "two"]), 10, 0.02, "the second notification")
    finally:
        await admin.close()
        await listener.close()


def test_there_is_nothing_to_listen_on_behind_a_transaction_pooler_without_a_listen_url():
    pooled = "postgresql://u@pooler:6543/postgres?pgbouncer=true"
    assert listen_dsn(None, pooled) is None
    assert listen_dsn("postgresql://u@db:5432/postgres", pooled) == "postgresql://u@db:5432/postgres"
    assert listen_dsn(None, "postgresql://u@db:5432/postgres?sslmode=require") == \
        "postgresql://u@db:5432/postgres?sslmode=require"


async def test_a_listen_url_on_a_transaction_pooler_is_reported_deaf(database_url, pgbouncer, caplog):
    url = pgbouncer.url(database_url)
    listener = Listener(url, {"meshhook_test_deaf": lambda _p: None}, application_name="meshhook-test-deaf",
                        check_every_s=0.3, probe_timeout_s=1.0, deaf_backoff_s=60)
    other = await asyncpg.connect(url, statement_cache_size=0)
    caplog.set_level(logging.WARNING, logger="meshhook.listener")
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 20)  # alone on the pooler, LISTEN seems to work
        # Another client takes the server connection the LISTEN ran on and keeps it in a transaction:
        # the listener's next statements run on another server, and its probe notification goes to
        # the session that LISTENed — now someone else's.
        tr = other.transaction()
        await tr.start()
        await other.fetchval("select 1")

        async def deaf():
            return listener.deaf and not listener.connected.is_set()

        await support.wait_for(deaf, 20, 0.05, "the listener to notice it is deaf")
        await support.wait_for(lambda: asyncio.sleep(0, any("delivers no notification" in r.getMessage()
                                                             for r in caplog.records)), 10, 0.05, "the error line")
        await tr.rollback()
    finally:
        await listener.close()
        await other.close()
