"""Live run events: one LISTEN connection per process fans notifications out to every open stream.

A stream re-reads the table after each wake-up (the table is the truth, the notification
only says "look again"), so hundreds of open streams hold one listening connection and
borrow a pooled connection only for the moment of a read.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson

log = logging.getLogger("meshhook.stream")
CHANNEL = "meshhook_events"


class EventHub:
    def __init__(self, dsn: str, channel: str = CHANNEL, application_name: str = "meshhook-stream"):
        self.dsn = dsn
        self.channel = channel
        self.application_name = application_name
        self._subs: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None
        self._closing = False
        self.connected = asyncio.Event()

    def subscribe(self, run_id: uuid.UUID | str) -> asyncio.Event:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())
        ev = asyncio.Event()
        self._subs.setdefault(str(run_id), set()).add(ev)
        return ev

    def unsubscribe(self, run_id: uuid.UUID | str, ev: asyncio.Event) -> None:
        subs = self._subs.get(str(run_id))
        if subs is not None:
            subs.discard(ev)
            if not subs:
                self._subs.pop(str(run_id), None)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        for ev in self._subs.get(payload, ()):
            ev.set()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for ev in subs:
                ev.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._closing:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=3, server_settings={"application_name": self.application_name})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(self.channel, self._on_notify)
                self.connected.set()
                backoff = 0.1
                self._wake_all()  # reconcile: anything committed while we were away is re-read
                while not lost.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        try:
                            await conn.execute("select 1")
                        except Exception:  # noqa: BLE001 - the connection is gone either way
                            lost.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect with backoff
                log.warning("event listener lost its connection", extra={"error": type(exc).__name__})
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
            if self._closing:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)  # polling covers the gap; come back soon

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def event_stream(hub: EventHub, key: uuid.UUID, first: list[dict], after: int,
                 read: Callable[[int], Awaitable[list[dict]]], is_final: Callable[[dict], bool],
                 expires_at: float) -> AsyncIterator[dict]:
    """Server-Sent Events of one timeline (a run's, a bulk resume's): `first` (already read, which
    also checked access), then whatever `read(after)` finds after each wake-up or every 5 s, until an
    event `is_final` or the caller's token expires (the client reconnects with Last-Event-ID)."""

    async def stream() -> AsyncIterator[dict]:
        nonlocal after
        wake = hub.subscribe(key)
        try:
            batch = first
            while True:
                done = False
                for ev in batch:
                    after = ev["id"]
                    yield {"id": str(ev["id"]), "event": ev["type"], "data": orjson.dumps(ev, default=str).decode()}
                    done = done or is_final(ev)
                if done or time.time() > expires_at:
                    return
                if len(batch) < 1000:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), 5)
                    wake.clear()
                batch = await read(after)
        finally:
            hub.unsubscribe(key, wake)

    return stream()
