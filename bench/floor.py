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


# The raw floor: what a person would write by hand for the same writes, as the superuser (no RLS,
# no membership helpers, no role switch): lock the parent and read its step statuses, write the
# run, its pending and copied steps, the three events, the audit row and the wake-up, commit.
_RAW_LOCK = """
select r.id, r.project_id, r.workflow_id, r.workflow_version, r.status, r.input, r.root_run_id,
       coalesce(st.keys, '{}') as step_keys, coalesce(st.statuses, '{}') as step_statuses
from runs r
cross join lateral (select array_agg(s.step_key) as keys, array_agg(s.status) as statuses
                    from step_runs s where s.run_id = r.id) st
where r.id = $1 for update of r
"""
_RAW_WRITE = """
with r as (
  insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, parent_run_id,
                    root_run_id, resumed_from_step, resume_reason, created_by)
  values ($1, $2, $3, $4, 'queued', 'resume', $5, $6, $7, $8, null, $9)
), p as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)
  select gen_random_uuid(), $1, $2, u.k, u.t, u.p, 'pending' from unnest($10::text[], $11::text[], $12::int[]) as u(k, t, p)
), c as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt, input, output,
                         output_truncated, attempts, started_at, finished_at, reused_from)
  select gen_random_uuid(), $1, s.project_id, s.step_key, s.step_type, u.p, 'succeeded', s.attempt, s.input, s.output,
         s.output_truncated, s.attempts, s.started_at, s.finished_at, s.id
  from step_runs s join unnest($13::text[], $14::int[]) as u(k, p) on u.k = s.step_key where s.run_id = $6
), e as (
  insert into run_events (run_id, project_id, type, step_key, payload)
  values ($1, $2, 'run_queued', null, $15), ($1, $2, 'run_resumed', $8, $15), ($6, $2, 'run_resumed', $8, $15)
), a as (
  insert into audit_log (action, outcome, actor_id, project_id, run_id, step_key, new_run_id, status_code, request_id,
                         ip, user_agent, detail)
  values ('run.resume', 'accepted', $9, $2, $6, $8, $1, 202, 'bench-raw', '127.0.0.1', 'meshhook-bench', $15)
)
select pg_notify('meshhook_runs', $1::text)
"""


class RawResume:
    """The hand-written superuser transaction of the same writes (`floor_raw_*`), for 10-step
    parents that failed at `from_step`: the RLS share of a resume's cost is then a number."""

    def __init__(self, actor: uuid.UUID, n_steps: int, fail_at: int):
        self.actor = actor
        self.from_step = f"s{fail_at}"
        self.reuse = [f"s{i}" for i in range(1, fail_at)]
        self.pending = ([f"s{i}" for i in range(fail_at, n_steps + 1)], ["transform"] * (n_steps - fail_at + 1),
                        list(range(fail_at - 1, n_steps)))

    round_trips = 4

    async def replay(self, conn: asyncpg.Connection, parent: uuid.UUID) -> None:
        new_run = uuid.uuid4()
        await conn.execute("BEGIN")
        try:
            p = await conn.fetchrow(_RAW_LOCK, parent)
            payload = {"parent_run_id": str(parent), "from_step": self.from_step}
            await conn.fetch(_RAW_WRITE, new_run, p["project_id"], p["workflow_id"], p["workflow_version"], p["input"],
                             parent, p["root_run_id"] or parent, self.from_step, self.actor, *self.pending,
                             self.reuse, list(range(len(self.reuse))), payload)
            await conn.execute("COMMIT")
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            raise
