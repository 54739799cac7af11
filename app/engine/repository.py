"""SQL of the engine (service scope: the worker's login role bypasses RLS)."""
from __future__ import annotations

import uuid
from datetime import datetime

from app.db.engine import Tx

# Claim runs whose time has come and whose lease is free or expired (a dead worker's runs).
# The run_started event is written in the same statement for runs leaving `queued`.
_CLAIM = """
with c as (
  select id, status as old_status from runs
  where status in ('queued', 'running')
    and (lease_expires_at is null or lease_expires_at < clock_timestamp())
    and (wake_at is null or wake_at <= clock_timestamp())
    and id <> all($4::uuid[])  -- never a run this worker is still driving (its lease may have lapsed)
  order by wake_at nulls first, created_at
  limit $2
  for update skip locked
), u as (
  update runs r set status = 'running', lease_owner = $1,
         lease_expires_at = clock_timestamp() + make_interval(secs => $3),
         started_at = coalesce(r.started_at, clock_timestamp()), wake_at = null, updated_at = clock_timestamp()
  from c where r.id = c.id
  returning r.id, r.project_id, r.workflow_id, r.workflow_version, r.trigger, r.input, r.created_by,
            r.created_at, r.resumed_from_step, r.resume_reason, r.control, c.old_status
), e as (
  insert into run_events (run_id, project_id, type, payload)
  select id, project_id, case when old_status = 'queued' then 'run_started' else 'run_taken_over' end,
         jsonb_build_object('worker', $1::text)
  from u
)
select * from u
"""

_TOUCH = """
update runs set updated_at = clock_timestamp()
where id = $1 and lease_owner = $2 and status = 'running'
returning control
"""

_STEP_UPDATE = """
update step_runs set status = $3, attempt = $4, input = coalesce($5, input), output = $6,
       output_truncated = $7, error = $8, started_at = coalesce($9, started_at), finished_at = $10,
       wake_at = $11, attempts = case when $12::jsonb is null then attempts else attempts || $12::jsonb end
where run_id = $1 and step_key = $2 and status <> 'succeeded'
"""

# All of a flush's events in one statement, in order (one trigger call, one round trip).
_EVENTS = """
insert into run_events (run_id, project_id, type, step_key, payload)
select $1, $2, u.t, u.k, u.p from unnest($3::text[], $4::text[], $5::jsonb[]) with ordinality as u(t, k, p, o)
order by u.o
"""


class LeaseLost(Exception):
    """Another worker owns the run now: stop touching it."""


class EngineRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def claim(self, owner: str, limit: int, lease_s: float, driving: list[uuid.UUID]):
        return await self.tx.fetch(_CLAIM, owner, limit, lease_s, driving)

    async def steps(self, run_id: uuid.UUID):
        return await self.tx.fetch(
            "select step_key, step_type, status, attempt, output, wake_at from step_runs where run_id = $1", run_id)

    async def touch(self, run_id: uuid.UUID, owner: str) -> str | None:
        row = await self.tx.fetchrow(_TOUCH, run_id, owner)
        if row is None:
            raise LeaseLost(str(run_id))
        return row["control"]

    async def update_steps(self, run_id: uuid.UUID, rows: list[tuple]) -> None:
        if rows:
            await self.tx.executemany(_STEP_UPDATE, [(run_id, *r) for r in rows])

    async def add_events(self, run_id: uuid.UUID, project_id: uuid.UUID, events: list[tuple]) -> None:
        if events:
            types, keys, payloads = zip(*events, strict=True)
            await self.tx.execute(_EVENTS, run_id, project_id, list(types), list(keys), list(payloads))

    async def finish_run(self, run_id: uuid.UUID, status: str, error: dict | None, final: bool) -> None:
        await self.tx.execute(
            "update runs set status = $2, error = $3, control = null, lease_owner = null, lease_expires_at = null,"
            " wake_at = null, updated_at = clock_timestamp(),"
            " finished_at = case when $4 then clock_timestamp() else null end where id = $1",
            run_id, status, error, final)

    async def sleep_run(self, run_id: uuid.UUID, wake_at: datetime) -> None:
        await self.tx.execute(
            "update runs set lease_owner = null, lease_expires_at = null, wake_at = $2,"
            " updated_at = clock_timestamp() where id = $1", run_id, wake_at)

    async def heartbeat(self, owner: str, run_ids: list[uuid.UUID], lease_s: float) -> None:
        await self.tx.execute(
            "update runs set lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " where lease_owner = $1 and id = any($2::uuid[]) and status = 'running'", owner, run_ids, lease_s)

    async def record_crash(self, run_id: uuid.UUID, owner: str, message: str, max_crashes: int) -> int:
        """Note a driver crash on the run's timeline; after `max_crashes` the run is failed instead of
        retried forever. Returns how many crashes the run has had. Only the lease holder may do it."""
        return await self.tx.fetchval(
            "with r as (select id, project_id from runs where id = $1 and lease_owner = $2 and status = 'running'"
            "           for update),"
            " e as (insert into run_events (run_id, project_id, type, payload)"
            "       select id, project_id, 'engine_error', jsonb_build_object('message', $3::text, 'worker', $2::text)"
            "       from r returning run_id),"
            " n as (select count(*) + 1 as crashes from run_events, r where run_events.run_id = r.id"
            "       and run_events.type = 'engine_error')"
            " select crashes from n, r", run_id, owner, message)

    async def release(self, owner: str, run_ids: list[uuid.UUID], *, notify: bool = False) -> None:
        """Hand runs back. `notify` (shutdown) lets another worker take them now rather than at its
        next poll; a crashed driver's run is not announced, so a poison run cannot spin hot."""
        await self.tx.execute(
            "with u as (update runs set lease_owner = null, lease_expires_at = null, updated_at = clock_timestamp()"
            " where lease_owner = $1 and id = any($2::uuid[]) and status = 'running' returning id)"
            " select pg_notify('meshhook_runs', id::text) from u where $3", owner, run_ids, notify)
