"""SQL of the engine (service scope: the worker's login role bypasses RLS)."""

from __future__ import annotations

import uuid
from datetime import datetime

import orjson

from app.db.engine import Tx

# Claim runs whose time has come (or whose operator asked to cancel/pause them: a sleeping run is
# woken for that) and whose lease is free or expired (a dead worker's runs). Fair share: `leased`
# counts each project's running runs that hold a live lease (all workers, and this worker's own);
# a project at MESHHOOK_PROJECT_MAX_RUNNING ($5), or at this worker's per-project share ($6), gets
# nothing, and within one claim a project gets only what is left of both caps (`rn`). Claims are
# serialized by a transaction advisory lock (taken first, see `claim`), so two workers claiming at
# once cannot both fill the same project's last places. The run_started event is written in the
# same statement for runs leaving `queued`.
_CLAIM = """
with leased as (
  select project_id, count(*) as n, count(*) filter (where lease_owner = $1) as mine
  from runs
  where status = 'running' and lease_owner is not null and lease_expires_at > clock_timestamp()
  group by project_id
), cand as (
  select r.id, r.project_id, r.wake_at, r.created_at,
         row_number() over (partition by r.project_id order by r.wake_at nulls first, r.created_at) as rn
  from (select id, project_id, wake_at, created_at from runs
        where status in ('queued', 'running')
          and (lease_expires_at is null or lease_expires_at < clock_timestamp())
          and (wake_at is null or wake_at <= clock_timestamp() or control is not null)
          and id <> all($4::uuid[])  -- never a run this worker is still driving (its lease may have lapsed)
          and project_id not in (select project_id from leased where n >= $5::int or mine >= $6::int)
        order by wake_at nulls first, created_at
        limit $2::int + $5::int) r
), pick as (
  select c.id from cand c left join leased l on l.project_id = c.project_id
  where c.rn + coalesce(l.n, 0) <= $5::int and c.rn + coalesce(l.mine, 0) <= $6::int
  order by c.wake_at nulls first, c.created_at
  limit $2
), c as (
  select id, status as old_status from runs
  where id in (select id from pick) and status in ('queued', 'running')
    and (lease_expires_at is null or lease_expires_at < clock_timestamp())
  for update skip locked
), u as (
  update runs r set status = 'running', lease_owner = $1,
         lease_expires_at = clock_timestamp() + make_interval(secs => $3),
         started_at = coalesce(r.started_at, clock_timestamp()), wake_at = null, updated_at = clock_timestamp()
  from c where r.id = c.id
  returning r.id, r.project_id, r.workflow_id, r.workflow_version, r.trigger, r.input, r.created_by,
            r.created_at, r.resumed_from_step, r.resume_reason, r.control, c.old_status,
            exists (select 1 from secrets s where s.project_id = r.project_id) as has_secrets
), e as (
  insert into run_events (run_id, project_id, type, payload)
  select id, project_id, case when old_status = 'queued' then 'run_started' else 'run_taken_over' end,
         jsonb_build_object('worker', $1::text)
  from u
)
select u.*, exists (select 1 from cand c left join leased l on l.project_id = c.project_id
                    where c.rn + coalesce(l.n, 0) > $5::int or c.rn + coalesce(l.mine, 0) > $6::int) as capped
from u
"""
CLAIM_LOCK = 0x6D6573_68  # pg_advisory_xact_lock key serializing claims ("mesh")

_TOUCH = """
update runs set updated_at = clock_timestamp()
where id = $1 and lease_owner = $2 and status = 'running'
returning control
"""

# All of a flush's step writes in one statement. The guard makes a step only move forward,
# whatever order transactions land in: a higher attempt number replaces a pending/running row; the
# same attempt only moves up in rank (pending → running → paused → terminal; running → running
# records a retry wait). A terminal row is never written again. The keys written are returned; the
# events of a refused write are dropped with it.
_STEP_UPDATE = """
update step_runs s set status = v.st, attempt = v.att, input = coalesce(v.inp::jsonb, s.input),
       output = v.outp::jsonb, output_truncated = v.trunc, error = v.err::jsonb,
       started_at = coalesce(v.started, s.started_at), finished_at = v.finished, wake_at = v.wake,
       attempts = case when v.atts is null then s.attempts else s.attempts || v.atts::jsonb end,
       attempt_started_at = coalesce(v.att_started, s.attempt_started_at)
from unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bool[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], $13::timestamptz[])
     as v(k, st, att, inp, outp, trunc, err, started, finished, wake, atts, att_started)
where s.run_id = $1 and s.step_key = v.k
  and ((v.att > s.attempt and s.status in ('pending', 'running'))
       or (v.att = s.attempt and (meshhook_step_rank(v.st) > meshhook_step_rank(s.status)
                                  or (v.st = 'running' and s.status = 'running'))))
returning s.step_key
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

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        driving: list[uuid.UUID],
        *,
        project_max: int,
        worker_project_max: int,
    ):
        await self.tx.execute("select pg_advisory_xact_lock($1)", CLAIM_LOCK)
        return await self.tx.fetch(_CLAIM, owner, limit, lease_s, driving, project_max, worker_project_max)

    async def steps(self, run_id: uuid.UUID):
        return await self.tx.fetch(
            "select step_key, step_type, status, attempt, output, wake_at, attempts, started_at, attempt_started_at"
            " from step_runs where run_id = $1",
            run_id,
        )

    async def controls(self, run_ids: list[uuid.UUID]):
        """Operator requests (cancel/pause) pending on runs this worker drives: the polling fallback
        of the notification."""
        return await self.tx.fetch(
            "select id, control from runs where id = any($1::uuid[]) and control is not null", run_ids
        )

    async def control(self, run_id: uuid.UUID) -> str | None:
        return await self.tx.fetchval("select control from runs where id = $1", run_id)

    async def touch(self, run_id: uuid.UUID, owner: str) -> str | None:
        row = await self.tx.fetchrow(_TOUCH, run_id, owner)
        if row is None:
            raise LeaseLost(str(run_id))
        return row["control"]

    async def update_steps(self, run_id: uuid.UUID, rows: list[tuple]) -> set[str]:
        """Write step rows (one per key; see `_STEP_UPDATE`); returns the keys actually written."""
        if not rows:
            return set()
        cols = [list(c) for c in zip(*rows, strict=True)]
        for i in (3, 4, 6, 10):  # JSON values travel as text (a list would read as an SQL array)
            cols[i] = [None if v is None else orjson.dumps(v).decode() for v in cols[i]]
        written = await self.tx.fetch(_STEP_UPDATE, run_id, *cols)
        return {r["step_key"] for r in written}

    async def add_events(self, run_id: uuid.UUID, project_id: uuid.UUID, events: list[tuple]) -> None:
        if events:
            types, keys, payloads = zip(*events, strict=True)
            await self.tx.execute(_EVENTS, run_id, project_id, list(types), list(keys), list(payloads))

    async def finish_run(self, run_id: uuid.UUID, status: str, error: dict | None, final: bool) -> None:
        await self.tx.execute(
            "update runs set status = $2, error = $3, control = null, lease_owner = null, lease_expires_at = null,"
            " wake_at = null, updated_at = clock_timestamp(),"
            " finished_at = case when $4 then clock_timestamp() else null end where id = $1",
            run_id,
            status,
            error,
            final,
        )

    async def sleep_run(self, run_id: uuid.UUID, wake_at: datetime) -> None:
        await self.tx.execute(
            "update runs set lease_owner = null, lease_expires_at = null, wake_at = $2,"
            " updated_at = clock_timestamp() where id = $1",
            run_id,
            wake_at,
        )

    async def heartbeat(self, owner: str, run_ids: list[uuid.UUID], lease_s: float) -> None:
        await self.tx.execute(
            "update runs set lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " where lease_owner = $1 and id = any($2::uuid[]) and status = 'running'",
            owner,
            run_ids,
            lease_s,
        )

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
            " select crashes from n, r",
            run_id,
            owner,
            message,
        )

    async def release(self, owner: str, run_ids: list[uuid.UUID], *, notify: bool = False) -> None:
        """Hand runs back. `notify` (shutdown) lets another worker take them now rather than at its
        next poll; a crashed driver's run is not announced, so a poison run cannot spin hot."""
        await self.tx.execute(
            "with u as (update runs set lease_owner = null, lease_expires_at = null, updated_at = clock_timestamp()"
            " where lease_owner = $1 and id = any($2::uuid[]) and status = 'running' returning id)"
            " select pg_notify('meshhook_runs', id::text) from u where $3",
            owner,
            run_ids,
            notify,
        )
