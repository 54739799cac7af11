"""SQL for runs, their steps and their events."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.db.engine import Tx

RUN_COLUMNS = (
    "id, project_id, workflow_id, workflow_version, status, trigger, input, error, parent_run_id,"
    " root_run_id, resumed_from_step, resume_reason, created_by, control, created_at, started_at,"
    " finished_at, resolved_by, rerun"
)
STEP_COLUMNS = (
    "id, step_key, step_type, position, status, attempt, input, output, output_truncated, error,"
    " started_at, finished_at, reused_from, override"
)

# A new run (API or webhook; resumes have their own statement in app/resume/repository.py), its
# pending steps, its run_queued event and the wake-up, in one statement.
_INSERT_RUN = """
with r as (
  insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, root_run_id,
                    created_by, delivery_id, delivery_hash)
  values ($1::uuid, $2::uuid, $3, $4, 'queued', $5, $6, $1::uuid, $7, $8, $13)
  returning id
), s as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)
  select meshhook_uuidv7(), $1::uuid, $2::uuid, u.k, u.t, u.p, 'pending'
  from unnest($9::text[], $10::text[], $11::int[]) as u(k, t, p)
), e as (
  insert into run_events (run_id, project_id, type, payload) select id, $2::uuid, 'run_queued', $12::jsonb from r
)
select pg_notify('meshhook_runs', id::text) from r
"""


class RunRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def insert_run(
        self,
        *,
        run_id: uuid.UUID,
        project_id: uuid.UUID,
        workflow_id: uuid.UUID,
        version: int,
        trigger: str,
        input: object,
        created_by: uuid.UUID | None = None,
        delivery_id: str | None = None,
        pending: tuple[list, list, list] = ([], [], []),
        event_payload: dict | None = None,
        delivery_hash: bytes | None = None,
    ) -> None:
        await self.tx.execute(
            _INSERT_RUN,
            run_id,
            project_id,
            workflow_id,
            version,
            trigger,
            input,
            created_by,
            delivery_id,
            pending[0],
            pending[1],
            pending[2],
            event_payload or {},
            delivery_hash,
        )

    async def get_with_role(self, run_id: uuid.UUID):
        """The run (if visible under RLS) and the caller's role in its project, in one round trip."""
        return await self.tx.fetchrow(
            f"select {RUN_COLUMNS}, (select m.role from project_members m where m.project_id = r.project_id"
            " and m.user_id = (select auth.uid())) as caller_role from runs r where r.id = $1",
            run_id,
        )

    async def get(self, run_id: uuid.UUID, *, for_update: bool = False):
        return await self.tx.fetchrow(
            f"select {RUN_COLUMNS} from runs where id = $1" + (" for update" if for_update else ""), run_id
        )

    async def steps(self, run_id: uuid.UUID):
        return await self.tx.fetch(f"select {STEP_COLUMNS} from step_runs where run_id = $1 order by position", run_id)

    async def step(self, run_id: uuid.UUID, key: str):
        return await self.tx.fetchrow(
            f"select {STEP_COLUMNS}, attempts from step_runs where run_id = $1 and step_key = $2", run_id, key
        )

    async def step_statuses(self, run_id: uuid.UUID):
        return await self.tx.fetch("select id, step_key, status from step_runs where run_id = $1", run_id)

    async def children(self, run_id: uuid.UUID) -> list[uuid.UUID]:
        rows = await self.tx.fetch("select id from runs where parent_run_id = $1 order by created_at, id", run_id)
        return [r["id"] for r in rows]

    async def active_child(self, run_id: uuid.UUID) -> uuid.UUID | None:
        return await self.tx.fetchval(
            "select id from runs where parent_run_id = $1 and status in ('queued', 'running') limit 1", run_id
        )

    async def lineage(self, root_id: uuid.UUID):
        return await self.tx.fetch(
            "select id, parent_run_id, status, resumed_from_step, trigger, created_at, finished_at, resolved_by, rerun"
            " from runs"
            " where root_run_id = $1 order by created_at, id",
            root_id,
        )

    async def find_by_delivery(self, workflow_id: uuid.UUID, delivery_id: str) -> tuple[uuid.UUID, bytes | None] | None:
        """(run id, SHA-256 of the body it was created from) of a webhook delivery id, if seen."""
        row = await self.tx.fetchrow(
            "select id, delivery_hash from runs where workflow_id = $1 and delivery_id = $2", workflow_id, delivery_id
        )
        return (row["id"], row["delivery_hash"]) if row is not None else None

    async def add_event(
        self,
        run_id: uuid.UUID,
        project_id: uuid.UUID,
        type_: str,
        step_key: str | None = None,
        payload: dict | None = None,
    ) -> None:
        await self.tx.execute(
            "insert into run_events (run_id, project_id, type, step_key, payload) values ($1, $2, $3, $4, $5)",
            run_id,
            project_id,
            type_,
            step_key,
            payload or {},
        )

    async def set_control(self, run_id: uuid.UUID, control: str) -> None:
        # wake_at cleared so a sleeping (delayed) run is claimed now and sees the request.
        await self.tx.execute(
            # A pending cancel is never downgraded to a pause.
            "with u as (update runs set control = case when control = 'cancel' then control else $2 end,"
            " wake_at = null, updated_at = clock_timestamp()"
            " where id = $1 returning id) select pg_notify('meshhook_runs', id::text) from u",
            run_id,
            control,
        )

    async def set_status(self, run_id: uuid.UUID, status: str, *, final: bool) -> None:
        await self.tx.execute(
            "update runs set status = $2, control = null, updated_at = clock_timestamp(),"
            " finished_at = case when $3 then clock_timestamp() else finished_at end where id = $1",
            run_id,
            status,
            final,
        )

    async def cancel_open_steps(self, run_id: uuid.UUID, project_id: uuid.UUID) -> list[str]:
        """Paused or pending steps of a paused run become cancelled, each with its event."""
        rows = await self.tx.fetch(
            "with s as (update step_runs set status = 'cancelled', finished_at = clock_timestamp()"
            " where run_id = $1 and status in ('pending', 'paused', 'running') returning step_key, position),"
            " e as (insert into run_events (run_id, project_id, type, step_key, payload)"
            " select $1, $2, 'step_cancelled', step_key, '{\"by\": \"operator\"}'::jsonb from s order by position)"
            " select step_key from s",
            run_id,
            project_id,
        )
        return [r["step_key"] for r in rows]

    async def events(self, run_id: uuid.UUID, after: int, limit: int):
        return await self.tx.fetch(
            "select id, run_id, type, step_key, payload, at from run_events where run_id = $1 and id > $2"
            " order by id limit $3",
            run_id,
            after,
            limit,
        )

    async def list_runs(
        self,
        *,
        project_id: uuid.UUID | None,
        workflow_id: uuid.UUID | None,
        status: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
        unresolved: bool = False,
    ):
        conds, args = [], []

        def arg(v):
            args.append(v)
            return f"${len(args)}"

        if project_id is not None:
            conds.append(f"project_id = {arg(project_id)}")
        if workflow_id is not None:
            conds.append(f"workflow_id = {arg(workflow_id)}")
        if status is not None:
            conds.append(f"status = {arg(status)}")
        if created_after is not None:
            conds.append(f"created_at > {arg(created_after)}")
        if created_before is not None:
            conds.append(f"created_at < {arg(created_before)}")
        if unresolved:
            # §10.1 "needs attention": matches the partial indexes ix_runs_unresolved(_project); the
            # lineage probe (ix_runs_root) drops runs whose matter has a queued or running run.
            conds.append(
                "status in ('failed', 'paused', 'cancelled') and resolved_by is null and not exists ("
                "select 1 from runs x where x.root_run_id = runs.root_run_id"
                " and x.status in ('queued', 'running') and (x.id = coalesce(runs.head_run_id, runs.id)"
                " or coalesce(runs.head_run_id, runs.id) = any(x.ancestors)))"
            )
        if cursor is not None:
            conds.append(f"(created_at, id) < ({arg(cursor[0])}, {arg(cursor[1])})")
        where = (" where " + " and ".join(conds)) if conds else ""
        sql = f"select {RUN_COLUMNS} from runs{where} order by created_at desc, id desc limit {arg(limit + 1)}"
        return await self.tx.fetch(sql, *args)
