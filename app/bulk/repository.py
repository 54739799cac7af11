"""SQL for bulk resume: matching runs, the job and its items, progress events, claims and leases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.db.engine import Tx

WAKE_CHANNEL = "meshhook_bulk"
WAKE_PAYLOAD = "created"

JOB_COLUMNS = (
    "id, project_id, workflow_id, status, request, request_hash, max_per_second, matched, accepted,"
    " skipped, rejected, next_position, error, created_by, created_at, started_at, cancelled_at,"
    " finished_at"
)

# A run's newer attempts: every descendant with its status, the nearest first. The bulk job skips a
# run that is resolved (a succeeded descendant), being resumed (a queued or running one) or was
# already resumed (its newest attempt is the one to resume).
_DESCENDANTS = """
with recursive d(origin, id, status, depth) as (
  select p.id, c.id, c.status, 1 from unnest($1::uuid[]) as p(id) join runs c on c.parent_run_id = p.id
  union all
  select d.origin, c.id, c.status, d.depth + 1 from d join runs c on c.parent_run_id = d.id
)
select origin,
       (array_agg(id order by depth) filter (where status in ('queued', 'running')))[1] as active_id,
       (array_agg(id order by depth) filter (where status = 'succeeded'))[1] as succeeded_id,
       (array_agg(id order by depth))[1] as child_id,
       (array_agg(status order by depth))[1] as child_status
from d group by origin
"""

# Outcomes settled since the last flush, the job's counters and lease, and one progress event
# listing them, in one statement. `outcome = 'pending'` makes a second recording of an item (a
# replay after a crash or a lost lease) a no-op, so counters never count an item twice.
_RECORD = """
with u as (
  select * from unnest($2::int[], $3::text[], $4::uuid[], $5::text[]) as u(pos, outcome, new_run_id, why)
), upd as (
  update bulk_resume_items i set outcome = u.outcome, new_run_id = u.new_run_id, why = u.why,
         finished_at = clock_timestamp()
  from u where i.bulk_id = $1 and i.position = u.pos and i.outcome = 'pending'
  returning i.position, i.run_id, i.outcome, i.new_run_id, i.why
), job as (
  update bulk_resumes b
     set accepted = b.accepted + (select count(*) from upd where outcome = 'accepted'),
         skipped = b.skipped + (select count(*) from upd where outcome = 'skipped'),
         rejected = b.rejected + (select count(*) from upd where outcome = 'rejected'),
         lease_expires_at = case when b.lease_owner = $6 then clock_timestamp() + $7 * interval '1 second'
                                 else b.lease_expires_at end,
         updated_at = clock_timestamp()
   where b.id = $1
  returning b.project_id, b.status, b.matched, b.accepted, b.skipped, b.rejected, b.lease_owner
), ev as (
  insert into bulk_resume_events (bulk_id, project_id, type, payload)
  select $1, job.project_id, 'bulk_progress', jsonb_build_object(
           'status', job.status, 'final', false, 'matched', job.matched, 'accepted', job.accepted,
           'skipped', job.skipped, 'rejected', job.rejected,
           'pending', job.matched - job.accepted - job.skipped - job.rejected,
           'items', (select jsonb_agg(jsonb_build_object('run_id', run_id, 'outcome', outcome,
                                                         'new_run_id', new_run_id, 'why', why) order by position)
                     from upd))
  from job where exists (select 1 from upd)
)
select status, coalesce(lease_owner = $6, false) as still_mine from job
"""

# The job is over once every item it started has an outcome: status (unless a cancel already set
# it), finished_at, the lease released and a final progress event, in one statement.
_FINISH = """
with f as (
  update bulk_resumes b
     set status = case when b.status = 'running' then $3 else b.status end,
         error = coalesce($4, b.error), finished_at = clock_timestamp(), updated_at = clock_timestamp(),
         lease_owner = null, lease_expires_at = null
   where b.id = $1 and b.lease_owner = $2 and b.finished_at is null
     and (b.status <> 'running' or b.next_position >= b.matched)
     and not exists (select 1 from bulk_resume_items i
                     where i.bulk_id = b.id and i.position < b.next_position and i.outcome = 'pending')
  returning b.id, b.project_id, b.status, b.matched, b.accepted, b.skipped, b.rejected, b.error
), ev as (
  insert into bulk_resume_events (bulk_id, project_id, type, payload)
  select id, project_id, 'bulk_progress', jsonb_build_object(
           'status', status, 'final', true, 'matched', matched, 'accepted', accepted, 'skipped', skipped,
           'rejected', rejected, 'pending', matched - accepted - skipped - rejected, 'error', error,
           'items', '[]'::jsonb)
  from f
)
select status from f
"""

# Cancel, second half (after the job row is updated and locked): every item not yet handed to a
# resume is skipped, counted, and announced. The job row lock orders this against the worker's
# start_batch, so an item is either started or skipped, never both.
_SKIP_NOT_STARTED = """
with s as (
  update bulk_resume_items i set outcome = 'skipped', why = $3, finished_at = clock_timestamp()
  where i.bulk_id = $1 and i.position >= $2 and i.outcome = 'pending'
  returning i.position
), c as (
  update bulk_resumes b set skipped = b.skipped + (select count(*) from s) where b.id = $1
  returning b.id, b.project_id, b.status, b.matched, b.accepted, b.skipped, b.rejected
)
insert into bulk_resume_events (bulk_id, project_id, type, payload)
select id, project_id, 'bulk_progress', jsonb_build_object(
         'status', status, 'final', false, 'matched', matched, 'accepted', accepted, 'skipped', skipped,
         'rejected', rejected, 'pending', matched - accepted - skipped - rejected, 'cancelled', true,
         'items', '[]'::jsonb)
from c
"""


@dataclass(frozen=True, slots=True)
class RunMatch:
    """A bulk resume's filter, resolved: which runs of one workflow it matches."""

    project_id: uuid.UUID
    workflow_id: uuid.UUID
    statuses: list[str]
    failed_step: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    run_ids: list[uuid.UUID] | None = None

    def args(self) -> tuple:
        return (
            self.project_id,
            self.workflow_id,
            self.statuses,
            self.created_after,
            self.created_before,
            self.run_ids,
            self.failed_step,
        )


_MATCH = """
where r.project_id = $1 and r.workflow_id = $2 and r.status = any($3::text[])
  and ($4::timestamptz is null or r.created_at > $4) and ($5::timestamptz is null or r.created_at < $5)
  and ($6::uuid[] is null or r.id = any($6::uuid[]))
  and ($7::text is null or exists (select 1 from step_runs s where s.run_id = r.id and s.step_key = $7
                                   and s.status = 'failed'))
"""


class BulkRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    # ---- matching (as the caller: RLS decides what is visible) ----------------------------------
    async def match_runs(self, m: RunMatch, limit: int):
        return await self.tx.fetch(
            f"select r.id, r.workflow_version, r.status from runs r {_MATCH} order by r.created_at, r.id limit $8",
            *m.args(),
            limit,
        )

    async def count_runs(self, m: RunMatch) -> int:
        return await self.tx.fetchval(f"select count(*) from runs r {_MATCH}", *m.args())

    async def step_statuses(self, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, str]]:
        rows = await self.tx.fetch(
            "select run_id, array_agg(step_key) as keys, array_agg(status) as statuses from step_runs"
            " where run_id = any($1::uuid[]) group by run_id",
            run_ids,
        )
        return {r["run_id"]: dict(zip(r["keys"], r["statuses"], strict=True)) for r in rows}

    async def descendants(self, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
        return {r["origin"]: dict(r) for r in await self.tx.fetch(_DESCENDANTS, run_ids)}

    # ---- the job (as the caller) ------------------------------------------------------------------
    async def by_idempotency_key(self, user_id: uuid.UUID, key: str):
        return await self.tx.fetchrow(
            f"select {JOB_COLUMNS} from bulk_resumes where created_by = $1 and idempotency_key = $2", user_id, key
        )

    async def insert_job(
        self,
        *,
        bulk_id: uuid.UUID,
        project_id: uuid.UUID,
        workflow_id: uuid.UUID,
        request: dict,
        request_hash: str,
        idempotency_key: str | None,
        max_per_second: int,
        created_by: uuid.UUID,
        request_id: str | None,
        ip: str | None,
        run_ids: list[uuid.UUID],
        from_steps: list[str | None],
    ) -> bool:
        """The job, then (in a second statement, so that the items' policy sees the job is the caller's)
        its items, its first progress event and the workers' wake-up. False when a job with the same
        Idempotency-Key already exists (a concurrent twin)."""
        matched = len(run_ids)
        done = matched == 0
        inserted = await self.tx.fetchval(
            "insert into bulk_resumes (id, project_id, workflow_id, status, request, request_hash, idempotency_key,"
            "  max_per_second, matched, created_by, request_id, ip, finished_at)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, case when $13 then clock_timestamp() end)"
            " on conflict (created_by, idempotency_key) where idempotency_key is not null do nothing"
            " returning id",
            bulk_id,
            project_id,
            workflow_id,
            "succeeded" if done else "running",
            request,
            request_hash,
            idempotency_key,
            max_per_second,
            matched,
            created_by,
            request_id,
            ip,
            done,
        )
        if inserted is None:
            return False
        await self.tx.execute(
            "with i as ("
            "  insert into bulk_resume_items (bulk_id, position, project_id, run_id, from_step)"
            "  select $1, u.ord - 1, $2, u.run_id, u.from_step"
            "  from unnest($3::uuid[], $4::text[]) with ordinality as u(run_id, from_step, ord)"
            "), e as ("
            "  insert into bulk_resume_events (bulk_id, project_id, type, payload)"
            "  values ($1, $2, 'bulk_progress', jsonb_build_object('status', $5::text, 'final', $6::boolean,"
            "    'matched', $7::int, 'accepted', 0, 'skipped', 0, 'rejected', 0, 'pending', $7::int, 'items', '[]'::jsonb))"
            ")"
            " select pg_notify($8, $9)",
            bulk_id,
            project_id,
            run_ids,
            from_steps,
            "succeeded" if done else "running",
            done,
            matched,
            WAKE_CHANNEL,
            WAKE_PAYLOAD,
        )
        return True

    async def get_with_role(self, bulk_id: uuid.UUID):
        return await self.tx.fetchrow(
            f"select {JOB_COLUMNS}, (select m.role from project_members m where m.project_id = b.project_id"
            " and m.user_id = (select auth.uid())) as caller_role from bulk_resumes b where b.id = $1",
            bulk_id,
        )

    async def get(self, bulk_id: uuid.UUID):
        return await self.tx.fetchrow(f"select {JOB_COLUMNS} from bulk_resumes where id = $1", bulk_id)

    async def items(self, bulk_id: uuid.UUID, outcome: str | None = None):
        return await self.tx.fetch(
            "select position, run_id, from_step, outcome, new_run_id, why from bulk_resume_items"
            " where bulk_id = $1 and ($2::text is null or outcome = $2) order by position",
            bulk_id,
            outcome,
        )

    async def cancel(self, bulk_id: uuid.UUID, why: str) -> bool:
        """The job becomes `cancelled`; the items it has not handed to a resume yet are skipped."""
        start = await self.tx.fetchval(
            "update bulk_resumes set status = 'cancelled', cancelled_at = clock_timestamp(), updated_at = clock_timestamp()"
            " where id = $1 and status = 'running' returning next_position",
            bulk_id,
        )
        if start is None:
            return False
        await self.tx.execute(_SKIP_NOT_STARTED, bulk_id, start, why)
        return True

    async def events(self, bulk_id: uuid.UUID, after: int, limit: int):
        return await self.tx.fetch(
            "select id, bulk_id, type, payload, at from bulk_resume_events where bulk_id = $1 and id > $2"
            " order by id limit $3",
            bulk_id,
            after,
            limit,
        )

    # ---- the worker (login role) --------------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_s: float, exclude: list[uuid.UUID]):
        return await self.tx.fetch(
            "with c as (select id from bulk_resumes"
            "  where finished_at is null and (lease_expires_at is null or lease_expires_at < clock_timestamp())"
            "    and not (id = any($3::uuid[]))"
            "  order by created_at limit $2 for update skip locked)"
            " update bulk_resumes b set lease_owner = $1, lease_expires_at = clock_timestamp() + $4 * interval '1 second',"
            "   updated_at = clock_timestamp()"
            " from c where b.id = c.id"
            " returning b.id, b.project_id, b.status, b.request, b.max_per_second, b.matched, b.next_position,"
            "   b.created_by, b.request_id, b.ip, b.crashes",
            owner,
            limit,
            exclude,
            lease_s,
        )

    async def unsettled_started_items(self, bulk_id: uuid.UUID):
        """Items handed to a resume whose outcome was never recorded (the worker died or lost its lease)."""
        return await self.tx.fetch(
            "select i.position, i.run_id, i.from_step from bulk_resume_items i join bulk_resumes b on b.id = i.bulk_id"
            " where i.bulk_id = $1 and i.position < b.next_position and i.outcome = 'pending' order by i.position",
            bulk_id,
        )

    async def start_batch(self, bulk_id: uuid.UUID, owner: str, start: int, end: int):
        """Hand items [start, end) to resumes: only while the job runs and this worker holds its lease."""
        return await self.tx.fetch(
            "with b as (update bulk_resumes set next_position = $4, started_at = coalesce(started_at, clock_timestamp()),"
            "   updated_at = clock_timestamp()"
            "  where id = $1 and status = 'running' and lease_owner = $2 and next_position = $3 returning id)"
            " select i.position, i.run_id, i.from_step from bulk_resume_items i join b on i.bulk_id = b.id"
            " where i.position >= $3 and i.position < $4 order by i.position",
            bulk_id,
            owner,
            start,
            end,
        )

    async def record(
        self,
        bulk_id: uuid.UUID,
        owner: str,
        lease_s: float,
        positions: list[int],
        outcomes: list[str],
        new_run_ids: list[uuid.UUID | None],
        whys: list[str | None],
    ):
        return await self.tx.fetchrow(_RECORD, bulk_id, positions, outcomes, new_run_ids, whys, owner, lease_s)

    async def reject_rest(self, bulk_id: uuid.UUID, why: str) -> None:
        """The job cannot go on: every item not yet handed to a resume is rejected."""
        await self.tx.execute(
            "with s as (update bulk_resume_items i set outcome = 'rejected', why = $2, finished_at = clock_timestamp()"
            "  from bulk_resumes b where b.id = $1 and i.bulk_id = b.id and i.position >= b.next_position"
            "  and i.outcome = 'pending' returning 1)"
            " update bulk_resumes set rejected = rejected + (select count(*) from s), next_position = matched"
            " where id = $1",
            bulk_id,
            why,
        )

    async def finish(self, bulk_id: uuid.UUID, owner: str, status: str, error: str | None = None) -> str | None:
        return await self.tx.fetchval(_FINISH, bulk_id, owner, status, error)

    async def release(self, bulk_id: uuid.UUID, owner: str) -> None:
        await self.tx.execute(
            "update bulk_resumes set lease_owner = null, lease_expires_at = null where id = $1 and lease_owner = $2",
            bulk_id,
            owner,
        )

    async def record_crash(self, bulk_id: uuid.UUID, owner: str) -> int | None:
        return await self.tx.fetchval(
            "update bulk_resumes set crashes = crashes + 1, lease_owner = null, lease_expires_at = null"
            " where id = $1 and lease_owner = $2 returning crashes",
            bulk_id,
            owner,
        )

    async def fail(self, bulk_id: uuid.UUID, error: str) -> None:
        """The job keeps crashing its driver: it ends `failed`, every unsettled item rejected with the error."""
        await self.tx.execute(
            "with s as (update bulk_resume_items set outcome = 'rejected', why = $2, finished_at = clock_timestamp()"
            "  where bulk_id = $1 and outcome = 'pending' returning 1),"
            " j as (update bulk_resumes set status = case when status = 'running' then 'failed' else status end,"
            "  error = $2, rejected = rejected + (select count(*) from s), next_position = matched,"
            "  finished_at = clock_timestamp(), updated_at = clock_timestamp(), lease_owner = null, lease_expires_at = null"
            "  where id = $1 and finished_at is null returning id, project_id, status, matched, accepted, skipped, rejected)"
            " insert into bulk_resume_events (bulk_id, project_id, type, payload)"
            " select id, project_id, 'bulk_progress', jsonb_build_object('status', status, 'final', true,"
            "  'matched', matched, 'accepted', accepted, 'skipped', skipped, 'rejected', rejected, 'pending', 0,"
            "  'error', $2::text, 'items', '[]'::jsonb) from j",
            bulk_id,
            error,
        )

    async def creator_role(self, project_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
        return await self.tx.fetchval(
            "select role from project_members where project_id = $1 and user_id = $2", project_id, user_id
        )
