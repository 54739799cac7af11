"""SQL that only resume needs: idempotency records."""

from __future__ import annotations

import uuid

from app.db.engine import Tx


class IdempotencyRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def get(self, user_id: uuid.UUID, scope: str, key: str):
        return await self.tx.fetchrow(
            "select request_hash, status_code, response from idempotency_records"
            " where user_id = $1 and scope = $2 and key = $3 and created_at > now() - interval '24 hours'",
            user_id,
            scope,
            key,
        )

    async def put(
        self, user_id: uuid.UUID, scope: str, key: str, request_hash: str, status_code: int, response: dict
    ) -> None:
        # A record older than 24 h is replaced; a live one is kept as it is (twins with the same key
        # are serialized by the lineage lock of _OPEN, so the second finds the first's record and replays it).
        await self.tx.execute(
            "insert into idempotency_records (user_id, scope, key, request_hash, status_code, response)"
            " values ($1, $2, $3, $4, $5, $6)"
            " on conflict (user_id, scope, key) do update set request_hash = excluded.request_hash,"
            " status_code = excluded.status_code, response = excluded.response, created_at = now()"
            " where idempotency_records.created_at <= now() - interval '24 hours'",
            user_id,
            scope,
            key,
            request_hash,
            status_code,
            response,
        )


# Everything a resume writes, in one statement: the run, its pending steps, the reused steps
# copied with identical outputs, the steps given a manual output (§10.2), the events on child and
# parent, the audit row and the wake-up.
# Guard (§10.1): `p`/`ok` guard the insert. Under the lineage lock taken by _OPEN, this statement's
# snapshot is the truth: the parent must not be resolved (unless "rerun": true) and no run of its matter
# (the subtree of its head) may be queued or running. When the guard fails nothing is written (every
# insert reads from `ok`), the statement returns no row, and the service reports why with
# _LINEAGE_CONFLICT. The child records `rerun`, its `ancestors` and its head: itself when it re-opens a
# finished matter (a re-run of a succeeded or resolved run), else the parent's head.
# Speed (issue 17): step ids are time-ordered (meshhook_uuidv7(), migration 0003) so they land on the
# right edge of the step_runs primary key, and nothing is RETURNING: a RETURNING clause makes every
# returned row pass the table's SELECT policy as well; the 202 body is built from `t`, `src` and `ovs`
# (the copied steps' values are the source rows' values).
_WRITE_RESUME = """
with t as (
  select clock_timestamp() as created_at
), p as (
  select pr.id, coalesce(pr.head_run_id, pr.id) as head, pr.ancestors, pr.resolved_by, pr.status
  from runs pr where pr.id = $6::uuid
), ok as (
  select p.* from p
  where ($23::boolean or p.resolved_by is null)
    and not exists (select 1 from runs x where x.root_run_id = $7::uuid and x.status in ('queued', 'running')
                      and (x.id = p.head or p.head = any(x.ancestors)))
), r as (
  insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, parent_run_id,
                    root_run_id, resumed_from_step, resume_reason, created_by, created_at, rerun, ancestors,
                    head_run_id)
  select $1::uuid, $2::uuid, $3, $4, 'queued', 'resume', $5, $6::uuid, $7::uuid, $8::text, $9::text, $10::uuid,
         t.created_at, $23::boolean, ok.ancestors || ok.id,
         case when $23::boolean and (ok.status = 'succeeded' or ok.resolved_by is not null) then $1::uuid else ok.head end
  from ok cross join t
), pend as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)
  select meshhook_uuidv7(), $1::uuid, $2::uuid, u.k, u.t, u.p, 'pending'
  from ok cross join unnest($11::text[], $12::text[], $13::int[]) as u(k, t, p)
), src as materialized (
  select s.project_id, s.step_key, s.step_type, u.p as position, s.attempt, s.input, s.output, s.output_truncated,
         s.attempts, s.started_at, s.finished_at, s.id as reused_from
  from ok cross join step_runs s join unnest($14::text[], $15::int[]) as u(k, p) on u.k = s.step_key
  where s.run_id = $6::uuid
), cp as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt, input, output,
                         output_truncated, attempts, started_at, finished_at, reused_from)
  select meshhook_uuidv7(), $1::uuid, src.project_id, src.step_key, src.step_type, src.position, 'succeeded',
         src.attempt, src.input, src.output, src.output_truncated, src.attempts, src.started_at, src.finished_at,
         src.reused_from
  from src
), ovs as materialized (
  select u.k, u.t, u.p, u.o::jsonb as o,
         jsonb_build_object('by', $10::text, 'at', t.created_at, 'reason', $9::text) as override
  from ok cross join t cross join unnest($24::text[], $25::text[], $26::int[], $27::text[]) as u(k, t, p, o)
), ov as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt, output,
                         finished_at, override)
  select meshhook_uuidv7(), $1::uuid, $2::uuid, ovs.k, ovs.t, ovs.p, 'succeeded', 0, ovs.o, t.created_at, ovs.override
  from ovs cross join t
), ev as (
  insert into run_events (run_id, project_id, type, step_key, payload)
  select e.run_id, $2::uuid, e.type, e.step_key, e.payload from ok cross join (values
    ($1::uuid, 'run_queued', null, $16::jsonb), ($1::uuid, 'run_resumed', $8::text, $17::jsonb),
    ($6::uuid, 'run_resumed', $8::text, $18::jsonb)) as e(run_id, type, step_key, payload)
), au as (
  insert into audit_log (action, outcome, actor_id, project_id, run_id, step_key, new_run_id, reason, status_code,
                         request_id, ip, user_agent, detail)
  select 'run.resume', 'accepted', $10::uuid, $2::uuid, $6::uuid, $8::text, $1::uuid, $9::text, 202, $19, $20, $21, $22
  from ok
)
select t.created_at, n.woke, s.step_key, s.step_type, s.position, s.status, s.attempt, s.input, s.output,
       s.output_truncated, s.error, s.started_at, s.finished_at, s.reused_from, s.override
from ok cross join t cross join (select pg_notify('meshhook_runs', $1::text) as woke) n
left join (select src.step_key, src.step_type, src.position, 'succeeded' as status, src.attempt, src.input,
                  src.output, src.output_truncated, null::jsonb as error, src.started_at, src.finished_at,
                  src.reused_from, null::jsonb as override
           from src
           union all
           select ovs.k, ovs.t, ovs.p, 'succeeded', 0, null::jsonb, ovs.o, false, null::jsonb, null::timestamptz,
                  t2.created_at, null::uuid, ovs.override
           from ovs cross join t as t2) s on true
"""

# The run (if visible under RLS), the caller's role and the run's step statuses in one round trip, and
# the lineage lock: every resume of a lineage (one root) takes this transaction-scoped lock first, so
# resumes of one lineage run one at a time and every later statement of this transaction (the
# idempotency read, the guard in _WRITE_RESUME) sees what the previous one committed: an approval of a
# paused run and a resume of its failed child cannot both start downstream work, and twins with one
# Idempotency-Key replay. The lock is taken only on a run the caller can see, released at commit or
# rollback. (No row lock on the parent: the advisory lock already serializes its resumes, and a row
# lock would need the UPDATE policy, i.e. a second statement after the role check.)
_OPEN = """
select r.id, r.project_id, r.workflow_id, r.workflow_version, r.status, r.input, r.root_run_id, r.resolved_by,
       (select m.role from project_members m where m.project_id = r.project_id
          and m.user_id = (select auth.uid())) as caller_role,
       coalesce(st.keys, '{}') as step_keys, coalesce(st.statuses, '{}') as step_statuses,
       pg_advisory_xact_lock(1297435720, hashtext(r.root_run_id::text)) as locked
from runs r
cross join lateral (select array_agg(s.step_key) as keys, array_agg(s.status) as statuses
                    from step_runs s where s.run_id = r.id) st
where r.id = $1
"""

# --- resume2 (§10.1): why the guard refused (error path only): the parent's resolver and any run of
# its matter still queued or running.
_LINEAGE_CONFLICT = """
select p.resolved_by,
       (select x.id from runs x where x.root_run_id = p.root_run_id and x.status in ('queued', 'running')
          and (x.id = coalesce(p.head_run_id, p.id) or coalesce(p.head_run_id, p.id) = any(x.ancestors))
        order by x.created_at limit 1) as active_run_id
from runs p where p.id = $1
"""


class ResumeRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def open(self, run_id: uuid.UUID):
        """The run (if visible), the caller's role, and the lineage lock (see _OPEN)."""
        return await self.tx.fetchrow(_OPEN, run_id)

    async def lineage_conflict(self, run_id: uuid.UUID):
        return await self.tx.fetchrow(_LINEAGE_CONFLICT, run_id)

    async def write(
        self,
        *,
        new_id,
        parent,
        version: int,
        input,
        from_step: str,
        reason,
        actor,
        pending: tuple[list, list, list],
        reuse_keys: list[str],
        reuse_positions: list[int],
        child_payload: dict,
        parent_payload: dict,
        request_id,
        ip,
        user_agent,
        audit_detail: dict,
        rerun: bool = False,
        overrides: tuple[list, list, list, list] = ([], [], [], []),
    ):
        return await self.tx.fetch(
            _WRITE_RESUME,
            new_id,
            parent["project_id"],
            parent["workflow_id"],
            version,
            input,
            parent["id"],
            parent["root_run_id"] or parent["id"],
            from_step,
            reason,
            actor,
            pending[0],
            pending[1],
            pending[2],
            reuse_keys,
            reuse_positions,
            {"parent_run_id": str(parent["id"])},
            child_payload,
            parent_payload,
            request_id,
            ip,
            user_agent,
            audit_detail,
            rerun,
            *overrides,
        )
