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
            user_id, scope, key)

    async def put(self, user_id: uuid.UUID, scope: str, key: str, request_hash: str, status_code: int,
                  response: dict) -> None:
        # A record older than 24 h is replaced; a live one is kept as it is (twins with the same key
        # are serialized by the parent's row lock, so the second finds the first's record and replays it).
        await self.tx.execute(
            "insert into idempotency_records (user_id, scope, key, request_hash, status_code, response)"
            " values ($1, $2, $3, $4, $5, $6)"
            " on conflict (user_id, scope, key) do update set request_hash = excluded.request_hash,"
            " status_code = excluded.status_code, response = excluded.response, created_at = now()"
            " where idempotency_records.created_at <= now() - interval '24 hours'",
            user_id, scope, key, request_hash, status_code, response)


# The parent, locked, with its step statuses, in one round trip. The lock serializes concurrent
# resumes of a run. "One active child per parent" is left to the unique index
# uq_runs_one_active_child (the write fails, the service answers 409 with the child's id): a
# lookup here cost 1.6-3.5 ms per resume and grew with every tenant's queue depth (issue 17).
_LOCK_PARENT = """
select r.id, r.project_id, r.workflow_id, r.workflow_version, r.status, r.input, r.root_run_id,
       coalesce(st.keys, '{}') as step_keys, coalesce(st.statuses, '{}') as step_statuses
from runs r
cross join lateral (select array_agg(s.step_key) as keys, array_agg(s.status) as statuses
                    from step_runs s where s.run_id = r.id) st
where r.id = $1 for update of r
"""

# Everything a resume writes, in one statement: the run, its pending steps, the reused steps
# copied with identical outputs, the events on child and parent, the audit row and the wake-up.
# Step ids are time-ordered (meshhook_uuidv7(), migration 0003) so they land on the right edge of
# the step_runs primary key. Nothing is RETURNING: a RETURNING clause makes every returned row
# pass the table's SELECT policy as well; the 202 body is built from `t` and `src` instead
# (the copied steps' values are the source rows' values).
_WRITE_RESUME = """
with t as (
  select clock_timestamp() as created_at
), r as (
  insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, parent_run_id,
                    root_run_id, resumed_from_step, resume_reason, created_by, created_at)
  select $1::uuid, $2::uuid, $3, $4, 'queued', 'resume', $5, $6::uuid, $7, $8::text, $9::text, $10::uuid, t.created_at
  from t
), pend as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)
  select meshhook_uuidv7(), $1::uuid, $2::uuid, u.k, u.t, u.p, 'pending'
  from unnest($11::text[], $12::text[], $13::int[]) as u(k, t, p)
), src as materialized (
  select s.project_id, s.step_key, s.step_type, u.p as position, s.attempt, s.input, s.output, s.output_truncated,
         s.attempts, s.started_at, s.finished_at, s.id as reused_from
  from step_runs s join unnest($14::text[], $15::int[]) as u(k, p) on u.k = s.step_key
  where s.run_id = $6::uuid
), cp as (
  insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt, input, output,
                         output_truncated, attempts, started_at, finished_at, reused_from)
  select meshhook_uuidv7(), $1::uuid, src.project_id, src.step_key, src.step_type, src.position, 'succeeded',
         src.attempt, src.input, src.output, src.output_truncated, src.attempts, src.started_at, src.finished_at,
         src.reused_from
  from src
), ev as (
  insert into run_events (run_id, project_id, type, step_key, payload)
  values ($1::uuid, $2::uuid, 'run_queued', null, $16::jsonb), ($1::uuid, $2::uuid, 'run_resumed', $8::text, $17::jsonb),
         ($6::uuid, $2::uuid, 'run_resumed', $8::text, $18::jsonb)
), au as (
  insert into audit_log (action, outcome, actor_id, project_id, run_id, step_key, new_run_id, reason, status_code,
                         request_id, ip, user_agent, detail)
  values ('run.resume', 'accepted', $10::uuid, $2::uuid, $6::uuid, $8::text, $1::uuid, $9::text, 202, $19, $20, $21, $22)
)
select t.created_at, n.woke, src.step_key, src.step_type, src.position, 'succeeded' as status, src.attempt,
       src.input, src.output, src.output_truncated, null::jsonb as error, src.started_at, src.finished_at,
       src.reused_from
from t cross join (select pg_notify('meshhook_runs', $1::text) as woke) n left join src on true
"""


class ResumeRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def lock_parent(self, run_id: uuid.UUID):
        return await self.tx.fetchrow(_LOCK_PARENT, run_id)

    async def write(self, *, new_id, parent, version: int, input, from_step: str, reason, actor,
                    pending: tuple[list, list, list], reuse_keys: list[str], reuse_positions: list[int],
                    child_payload: dict, parent_payload: dict, request_id, ip, user_agent, audit_detail: dict):
        return await self.tx.fetch(
            _WRITE_RESUME, new_id, parent["project_id"], parent["workflow_id"], version, input, parent["id"],
            parent["root_run_id"] or parent["id"], from_step, reason, actor, pending[0], pending[1], pending[2],
            reuse_keys, reuse_positions, {"parent_run_id": str(parent["id"])}, child_payload, parent_payload,
            request_id, ip, user_agent, audit_detail)
