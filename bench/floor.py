"""The floor: the exact statements one accepted resume issues, sent straight through asyncpg.

Rather than a hand-kept copy of the service's SQL (which drifts as the hot path changes), the
bench records what the service really sends: it calls `app.resume.service.resume` in this
process once, with an asyncpg query logger on the connection, and keeps every statement with
its arguments, including the transaction's BEGIN (with the role switch and the verified
claims) and COMMIT. The floor then replays that list for other parents of the same shape,
with the parent's id and the new run's id substituted: the same round trips and the same
work in PostgreSQL under RLS, with no HTTP, no JWT, no pool layers and no Python planning.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


def _subst(value: Any, ids: dict[uuid.UUID, uuid.UUID], strs: dict[str, str]) -> Any:
    if isinstance(value, uuid.UUID):
        return ids.get(value, value)
    if isinstance(value, str):
        for old, new in strs.items():
            if old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _subst(v, ids, strs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_subst(v, ids, strs) for v in value)
    return value


def _mentions(value: Any, ids: set[uuid.UUID], strs: set[str]) -> bool:
    if isinstance(value, uuid.UUID):
        return value in ids
    if isinstance(value, str):
        return any(s in value for s in strs)
    if isinstance(value, dict):
        return any(_mentions(v, ids, strs) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions(v, ids, strs) for v in value)
    return False


@dataclass
class Statement:
    query: str
    args: Any  # a tuple (one execution) or a list of tuples (executemany); () for the simple protocol
    many: bool
    templated: bool  # mentions the recorded parent or new run: substitute per replay


class RecordedResume:
    """The statements of one accepted resume, recorded from the service, replayable for another parent."""

    def __init__(self, statements: list[Statement], parent: uuid.UUID, new_run: uuid.UUID):
        self.statements = statements
        self.parent, self.new_run = parent, new_run

    @property
    def round_trips(self) -> int:
        return len(self.statements)

    @classmethod
    async def record(cls, url: str, user_id: uuid.UUID, claims: dict, warm_parent: uuid.UUID,
                     parent: uuid.UUID, from_step: str) -> "RecordedResume":
        from sqlalchemy import event

        from app.audit.service import RequestFacts
        from app.auth.jwt import User
        from app.db.engine import Database
        from app.resume import service

        log: list[asyncpg.connection.LoggedQuery] = []
        recording = False

        def on_query(q) -> None:
            if recording:
                log.append(q)

        async def attach(conn: asyncpg.Connection) -> None:
            conn.add_query_logger(on_query)

        db = Database(url, pool_size=1, application_name="meshhook-bench-record")

        @event.listens_for(db.engine.sync_engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.run_async(attach)

        user = User(user_id, claims)
        facts = RequestFacts("bench-floor", "127.0.0.1", "meshhook-bench")
        body = ('{"from_step": "%s"}' % from_step).encode()
        try:
            status, _ = await service.resume(db, user, warm_parent, body, None, facts)  # connects, fills caches
            if status != 202:
                raise RuntimeError(f"recording a resume: warm-up answered {status}")
            for _ in range(3):
                await asyncio.sleep(0)
            recording = True
            status, out = await service.resume(db, user, parent, body, None, facts)
            for _ in range(3):
                await asyncio.sleep(0)  # query-logger callbacks run on the next loop iterations
            recording = False
        finally:
            await db.dispose()
        if status != 202:
            raise RuntimeError(f"recording a resume answered {status}")
        new_run = uuid.UUID(str(out["id"]))
        ids, strs = {parent, new_run}, {str(parent), str(new_run)}
        statements = [Statement(q.query, q.args, isinstance(q.args, list),
                                _mentions(q.query, set(), strs) or _mentions(q.args, ids, strs)) for q in log]
        if not statements:
            raise RuntimeError("recording a resume captured no statements")
        return cls(statements, parent, new_run)

    async def replay(self, conn: asyncpg.Connection, parent: uuid.UUID) -> None:
        new_run = uuid.uuid4()
        ids = {self.parent: parent, self.new_run: new_run}
        strs = {str(self.parent): str(parent), str(self.new_run): str(new_run)}
        try:
            for st in self.statements:
                query, args = st.query, st.args
                if st.templated:
                    query, args = _subst(query, ids, strs), _subst(args, ids, strs)
                if st.many:
                    await conn.executemany(query, args)
                elif args:
                    await conn.fetch(query, *args)
                else:
                    await conn.execute(query)
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            raise

    def describe(self) -> list[str]:
        return [" ".join(st.query.split())[:110] for st in self.statements]
