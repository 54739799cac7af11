"""Live events (runs, bulk resumes): one LISTEN connection per process fans notifications out to every open stream.

A stream re-reads the table after each wake-up (the table is the truth, the notification
only says "look again"), so hundreds of open streams hold one listening connection and
borrow a pooled connection only for the moment of a read. While nothing listens (no
MESHHOOK_LISTEN_URL under transaction pooling, or the listener is reconnecting) streams
re-read every poll interval instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from app.db.listener import Listener

CHANNEL = "meshhook_events"
LISTENING_RECHECK_S = 5.0  # a safety re-read even while notifications arrive


class EventHub:
    def __init__(
        self, dsn: str | None, poll_s: float = 1.0, *, channel: str = CHANNEL, application_name: str = "meshhook-stream"
    ):
        self.poll_s = poll_s
        self._subs: dict[str, set[asyncio.Event]] = {}
        self._listener = Listener(
            dsn, {channel: self._on_notify}, application_name=application_name, on_connect=self._wake_all, poll_s=poll_s
        )

    @property
    def connected(self) -> asyncio.Event:
        return self._listener.connected

    @property
    def listens(self) -> bool:
        """False when there is nowhere to LISTEN (transaction pooling without MESHHOOK_LISTEN_URL)."""
        return self._listener.dsn is not None

    @property
    def wait_s(self) -> float:
        """How long a stream waits for a wake-up before it re-reads the table anyway."""
        return LISTENING_RECHECK_S if self._listener.connected.is_set() else self.poll_s

    def start(self) -> None:
        self._listener.start()

    def subscribe(self, run_id: uuid.UUID | str) -> asyncio.Event:
        self._listener.start()
        ev = asyncio.Event()
        self._subs.setdefault(str(run_id), set()).add(ev)
        return ev

    def unsubscribe(self, run_id: uuid.UUID | str, ev: asyncio.Event) -> None:
        subs = self._subs.get(str(run_id))
        if subs is not None:
            subs.discard(ev)
            if not subs:
                self._subs.pop(str(run_id), None)

    def _on_notify(self, run_id: str) -> None:
        for ev in self._subs.get(run_id, ()):
            ev.set()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for ev in subs:
                ev.set()

    async def close(self) -> None:
        await self._listener.close()


def event_stream(
    hub: EventHub,
    key: uuid.UUID,
    first: list[dict],
    after: int,
    read: Callable[[int], Awaitable[list[dict]]],
    is_final: Callable[[dict], bool],
    expires_at: float,
) -> AsyncIterator[dict]:
    """Server-Sent Events of one timeline (a run's, a bulk resume's): `first` (already read, which
    also checked access), then whatever `read(after)` finds after each wake-up or every `hub.wait_s`,
    until an event `is_final` or the caller's token expires (the client reconnects with Last-Event-ID)."""

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
                        await asyncio.wait_for(wake.wait(), hub.wait_s)
                    wake.clear()
                batch = await read(after)
        finally:
            hub.unsubscribe(key, wake)

    return stream()


async def events_response(
    request: Any,
    db: Any,
    claims: dict,
    key: uuid.UUID,
    list_events: Callable[[Any, uuid.UUID, int, int], Awaitable[dict]],
    is_final: Callable[[dict], bool],
    after: int,
    limit: int,
    last_event_id: str | None,
    wants_stream: bool,
) -> Any:
    """The body of an events endpoint (a run's, a bulk resume's): the JSON page, or the SSE stream that
    replays after `Last-Event-ID` (or `after`) and follows until `is_final`. `list_events(tx, key, after,
    limit)` reads one page as the caller (and raises 404 for a non-member)."""
    from sse_starlette.sse import EventSourceResponse

    if not wants_stream:
        async with db.user_scope(claims) as tx:
            return await list_events(tx, key, after, limit)
    if last_event_id:
        after = max(after, int(last_event_id))  # the header's pattern makes this a safe bigint
    async with db.user_scope(claims) as tx:
        first = await list_events(tx, key, after, 1000)  # also the membership check (404)

    async def read(after_id: int) -> list[dict]:
        async with db.user_scope(claims) as tx:
            return (await list_events(tx, key, after_id, 1000))["items"]

    stream = event_stream(
        request.app.state.hub, key, first["items"], after, read, is_final, float(claims.get("exp", 0))
    )
    return EventSourceResponse(
        stream, ping=request.app.state.settings.sse_ping_s, headers={"Cache-Control": "no-store"}
    )
