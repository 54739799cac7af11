"""One LISTEN connection outside the pool, shared by the worker and the event streams.

NOTIFY is a wake-up, the table is the truth: the listener connects, LISTENs, calls
`on_connect` (the owner reconciles from the table) after every (re)connect, proves every few
seconds that notifications really arrive (a probe NOTIFY to itself, which also notices a dead
connection), and reconnects with backoff. A connection that stays up but never delivers (a
transaction-mode pooler given as MESHHOOK_LISTEN_URL) is reported once and backed off; the
owner's polling carries on meanwhile.

Under a transaction-mode pooler without MESHHOOK_LISTEN_URL there is nothing to listen on:
`listen_dsn` returns None, `Listener.run` says once per process that it polls, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping

import asyncpg

from app.db.engine import asyncpg_dsn, split_pooler_flag

log = logging.getLogger("meshhook.listener")

Handler = Callable[[str], None]  # called with the notification's payload

_polling_said = False


def listen_dsn(listen_url: str | None, database_url: str) -> str | None:
    """Where to LISTEN: MESHHOOK_LISTEN_URL, else the database URL unless that is a transaction-mode
    pooler (where LISTEN is silently lost: the session it ran in goes back to the pool), else None."""
    if listen_url:
        return asyncpg_dsn(listen_url)
    if split_pooler_flag(database_url)[1]:
        return None
    return asyncpg_dsn(database_url)


def say_polling(poll_s: float) -> None:
    """One line per process: the service runs on polling because it has nowhere to LISTEN."""
    global _polling_said
    if not _polling_said:
        _polling_said = True
        log.warning(
            "transaction pooling (MESHHOOK_DB_POOLER=transaction) and no MESHHOOK_LISTEN_URL: "
            "no LISTEN/NOTIFY; the worker and event streams poll the database every %.2gs. "
            "Set MESHHOOK_LISTEN_URL to a direct or session-mode URL for instant pickup.",
            poll_s,
            extra={"mode": "polling", "poll_interval_s": poll_s},
        )


class Listener:
    def __init__(
        self,
        dsn: str | None,
        handlers: Mapping[str, Handler],
        *,
        application_name: str,
        on_connect: Callable[[], None] = lambda: None,
        on_disconnect: Callable[[], None] = lambda: None,
        poll_s: float = 1.0,
        connect_timeout_s: float = 3.0,
        check_every_s: float = 2.0,
        probe_timeout_s: float = 2.0,
        max_backoff_s: float = 1.0,
        deaf_backoff_s: float = 30.0,
    ):
        self.dsn = dsn
        self.handlers = dict(handlers)
        self.application_name = application_name
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.poll_s = poll_s
        self.connect_timeout_s = connect_timeout_s
        self.check_every_s = check_every_s
        self.probe_timeout_s = probe_timeout_s
        self.max_backoff_s = max_backoff_s
        self.deaf_backoff_s = deaf_backoff_s
        self.connected = asyncio.Event()  # set while notifications are proven to arrive
        self.connects = 0
        self.deaf = False  # the last connection accepted LISTEN but delivered nothing
        self._probe_channel = f"meshhook_probe_{uuid.uuid4().hex[:12]}"
        self._probe_seq = 0
        self._probe_seen: asyncio.Event | None = None
        self._probe_want = ""
        self._task: asyncio.Task | None = None
        self._deaf_said = False

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"listen:{self.application_name}")
        return self._task

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def run(self) -> None:
        """Listen until cancelled (returns at once when there is nothing to listen on)."""
        if self.dsn is None:
            say_polling(self.poll_s)
            return
        backoff = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            deaf = False
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout_s,
                    statement_cache_size=0,
                    server_settings={"application_name": self.application_name},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel, handler in self.handlers.items():
                    await conn.add_listener(channel, self._dispatch(handler))
                await conn.add_listener(self._probe_channel, self._on_probe)
                if await self._probe(conn):
                    self.deaf = False
                    self.connects += 1
                    self.connected.set()
                    backoff = 0.1
                    self.on_connect()  # reconcile: anything committed while we were away is re-read
                    while not lost.is_set():
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(lost.wait(), self.check_every_s)
                        if not lost.is_set() and not await self._probe(conn):
                            lost.set()
                    log.warning("listener connection lost; reconnecting", extra={"listener": self.application_name})
                deaf = self.deaf
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect with backoff, polling covers the gap
                log.warning(
                    "listener cannot connect", extra={"listener": self.application_name, "error": type(exc).__name__}
                )
            finally:
                if self.connected.is_set():
                    self.connected.clear()
                    self.on_disconnect()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
                if deaf:
                    self._report_deaf()
            await asyncio.sleep(self.deaf_backoff_s if deaf else backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    # ---- internals -------------------------------------------------------------------
    @staticmethod
    def _dispatch(handler: Handler):
        def on_notify(_conn, _pid, _channel, payload: str) -> None:
            handler(payload)

        return on_notify

    def _on_probe(self, _conn, _pid, _channel, payload: str) -> None:
        if payload == self._probe_want and self._probe_seen is not None:
            self._probe_seen.set()

    async def _probe(self, conn: asyncpg.Connection) -> bool:
        """NOTIFY ourselves and wait for it: True when it arrived. A failed statement raises (lost)."""
        self._probe_seq += 1
        self._probe_want = str(self._probe_seq)
        self._probe_seen = asyncio.Event()
        await asyncio.wait_for(
            conn.execute(f"select pg_notify('{self._probe_channel}', '{self._probe_want}')"), self.probe_timeout_s
        )
        try:
            await asyncio.wait_for(self._probe_seen.wait(), self.probe_timeout_s)
            return True
        except TimeoutError:
            if conn.is_closed():
                return False
            self.deaf = True
            return False

    def _report_deaf(self) -> None:
        if not self._deaf_said:
            self._deaf_said = True
            log.error(
                "the listen connection accepts LISTEN but delivers no notification (is MESHHOOK_LISTEN_URL "
                "a transaction-mode pooler? use a direct or session-mode URL); polling meanwhile and "
                "retrying every %ss",
                self.deaf_backoff_s,
                extra={"listener": self.application_name},
            )
