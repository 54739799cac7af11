"""Async SQLAlchemy engine on asyncpg, and the two unit-of-work scopes.

The engine owns the pool. Statements run on the pool's asyncpg driver connection:
repositories send hand-written SQL (RLS policies, CTEs, INSERT … SELECT copies), and the
hot paths skip SQLAlchemy's statement layer; bench/ measures what that buys.

* ``user_scope(claims)``: one transaction as role ``authenticated`` with
  ``request.jwt.claims`` set, so row-level security decides what the caller sees.
* ``service_scope()``: one transaction as the login role, which bypasses RLS (the
  worker, and audit rows of denied requests).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from collections.abc import AsyncIterator

import asyncpg
import orjson
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.errors import DatabaseUnavailable

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionFailureError,
)

# These mean the connection is unusable and must not go back to the pool. A connection that has
# just been sent the server's "terminating connection" error (a restart), but not yet its end of
# stream, is not closed yet and refuses its next statement with InternalClientError ("cannot switch
# to state 12; another operation (2) is in progress"). Statements on a Tx never overlap, so here
# that error means the server went away (a 503), not a misuse (a 500).
_STALE = (*_UNAVAILABLE, asyncpg.exceptions.InternalClientError)


POOLER_FLAG = "pgbouncer"


def _split_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment)), parse_qsl(
        parts.query, keep_blank_values=True
    )


def _with_query(base: str, query: list[tuple[str, str]]) -> str:
    from urllib.parse import urlencode, urlsplit, urlunsplit

    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def split_pooler_flag(url: str) -> tuple[str, bool]:
    """The URL without `pgbouncer=true` (the convention Prisma and others use for a transaction-mode
    pooler; asyncpg would send it to the server as a setting), and whether it was there."""
    base, query = _split_query(url)
    flag = any(k == POOLER_FLAG and v.lower() in ("true", "1", "yes") for k, v in query)
    if not any(k == POOLER_FLAG for k, _ in query):
        return url, False
    return _with_query(base, [(k, v) for k, v in query if k != POOLER_FLAG]), flag


def pooler_mode(url: str, setting: str | None) -> str:
    """`transaction` or `session`: MESHHOOK_DB_POOLER when set, else `pgbouncer=true` in the URL."""
    if setting:
        return setting
    return "transaction" if split_pooler_flag(url)[1] else "session"


def with_pooler(url: str, setting: str | None) -> str:
    """The URL carrying the pooler mode (`pgbouncer=true` for transaction mode), so every pool built from
    it (the API's, each worker's, the migration's) behaves the same without passing settings around."""
    mode = pooler_mode(url, setting)
    base, _ = split_pooler_flag(url)
    if mode != "transaction":
        return base
    stripped, query = _split_query(base)
    return _with_query(stripped, [*query, (POOLER_FLAG, "true")])


def driver_connect_args(url: str) -> dict[str, Any]:
    """asyncpg / SQLAlchemy arguments for `url`. Behind a transaction-mode pooler consecutive transactions
    of one client connection run on different server connections, so nothing may outlive a transaction:
    asyncpg's statement cache is off (its statements are then unnamed, parsed and run in one protocol
    exchange that the pooler keeps on one server), and so is the SQLAlchemy dialect's, whose statements
    are unnamed too. Measured through PgBouncer 1.18: the default cache fails about every second statement
    with `prepared statement "__asyncpg_stmt_N__" does not exist` once four clients share two servers."""
    if not split_pooler_flag(url)[1]:
        return {}
    return {"statement_cache_size": 0, "prepared_statement_cache_size": 0, "prepared_statement_name_func": lambda: ""}


def sqlalchemy_url(url: str) -> str:
    url = split_pooler_flag(url)[0]
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def asyncpg_dsn(url: str) -> str:
    url = split_pooler_flag(url)[0]
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON in and out as Python objects (orjson), on every pooled or listener connection."""
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


def _literal(text: str) -> str:
    """A SQL string literal; an E'' literal escapes the same way whatever standard_conforming_strings says."""
    if "\x00" in text:
        raise ValueError("NUL in SQL literal")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _begin_sql(claims_json: str | None) -> str:
    if claims_json is None:
        return "BEGIN"
    return (
        "BEGIN; SELECT set_config('role', 'authenticated', true), "
        f"set_config('request.jwt.claims', {_literal(claims_json)}, true)"
    )


class Tx:
    """The connection of one open transaction. Repositories are built from it."""

    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self.conn.execute(sql, *args)

    async def executemany(self, sql: str, args: list[tuple]) -> None:
        await self.conn.executemany(sql, args)


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        application_name: str = "meshhook-api",
        connect_timeout_s: float = 2.0,
        command_timeout_s: float = 15.0,
        pool_timeout_s: float = 10.0,
        max_overflow: int | None = None,
    ):
        self.url = url
        self.dsn = asyncpg_dsn(url)
        self.pooler = "transaction" if split_pooler_flag(url)[1] else "session"
        self.application_name = application_name
        self.connect_timeout_s = connect_timeout_s
        # Waiting for a free pooled connection is queueing under load, not a sign of a lost database:
        # it gets its own, longer bound (a short connect timeout made bursts fail). A lost database
        # still fails fast: its connection attempts are refused or time out after connect_timeout_s.
        self.checkout_timeout_s = pool_timeout_s + connect_timeout_s + 0.5
        # pool_size kept open + max_overflow more while busy (default: as many again)
        self.capacity = pool_size + (pool_size if max_overflow is None else max_overflow)
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(url),
            pool_size=pool_size,
            max_overflow=self.capacity - pool_size,
            pool_timeout=pool_timeout_s,
            pool_pre_ping=False,
            pool_recycle=1800,
            connect_args={
                "server_settings": {"application_name": application_name},
                "timeout": connect_timeout_s,
                "command_timeout": command_timeout_s,
                **driver_connect_args(url),
            },
        )

        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_conn, _record):  # runs after the dialect's own codecs
            dbapi_conn.run_async(init_connection)

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def _checkout(self):
        try:
            return await asyncio.wait_for(self.engine.connect(), self.checkout_timeout_s)
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable() from exc
        except sqlalchemy.exc.TimeoutError as exc:  # every pooled connection stayed busy: overloaded
            raise DatabaseUnavailable("The service is busy; try again shortly.") from exc
        except Exception as exc:  # sqlalchemy wraps driver errors at checkout
            if is_db_unavailable(exc):
                raise DatabaseUnavailable() from exc
            raise

    @staticmethod
    async def _discard(sa_conn) -> None:
        with contextlib.suppress(Exception):
            await sa_conn.invalidate()
        with contextlib.suppress(Exception):
            await sa_conn.close()

    async def _begin(self, claims_json: str | None):
        """A pooled connection with its transaction open. Connections that died with a restarted
        server are dropped and replaced here, so the first requests after a restart do not fail
        one per dead connection: is_closed() costs no round trip, and a BEGIN that finds its
        connection gone is retried once on another (nothing ran on it, so that is safe)."""
        retried = False
        for _ in range(self.capacity + 1):
            sa_conn = await self._checkout()
            raw: asyncpg.Connection | None = None
            try:
                raw = (await sa_conn.get_raw_connection()).driver_connection
                if not raw.is_closed():
                    # One round trip opens the transaction and, for a user, switches to the
                    # `authenticated` role with the verified claims (simple-query protocol).
                    await raw.execute(_begin_sql(claims_json))
                    return sa_conn, raw
            except _STALE as exc:
                await self._discard(sa_conn)
                if retried or isinstance(exc, asyncio.TimeoutError):  # slow is not gone: no second wait
                    raise DatabaseUnavailable() from exc
                retried = True
                continue
            except BaseException:
                if raw is not None and not raw.is_closed() and raw.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await raw.execute("ROLLBACK")
                with contextlib.suppress(Exception):
                    await sa_conn.close()
                raise
            await self._discard(sa_conn)
        raise DatabaseUnavailable()

    @contextlib.asynccontextmanager
    async def _scope(self, claims_json: str | None) -> AsyncIterator[Tx]:
        sa_conn, raw = await self._begin(claims_json)
        try:
            try:
                yield Tx(raw)
            except BaseException:
                if not raw.is_closed() and raw.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await raw.execute("ROLLBACK")
                raise
            else:
                await raw.execute("COMMIT")
        except _STALE as exc:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            raise DatabaseUnavailable() from exc
        finally:
            with contextlib.suppress(Exception):
                await sa_conn.close()

    def user_scope(self, claims: dict) -> contextlib.AbstractAsyncContextManager[Tx]:
        return self._scope(orjson.dumps(claims).decode())

    def service_scope(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        return self._scope(None)

    async def ping(self) -> bool:
        async with self.service_scope() as tx:
            return await tx.fetchval("select 1") == 1


def is_db_unavailable(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _UNAVAILABLE):
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)
        seen += 1
    return False
