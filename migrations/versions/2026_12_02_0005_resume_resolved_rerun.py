"""Resolved runs, deliberate re-runs and manual step outputs (DESIGN §10.1, §10.2).

runs: `resolved_by` (the first succeeded run that finished this run's work, maintained by a trigger
when a resumed run succeeds), `rerun` (started with "rerun": true), `ancestors` (parent chain, root
first) and `head_run_id` (the run that opened this run's matter: the root, or a re-run of a finished
run; null = the run itself). step_runs: `override` ({by, at, reason} of a hand-set output).
The rule is written down in docs/resume.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
alter table runs add column resolved_by uuid;
alter table runs add column rerun boolean not null default false;
alter table runs add column ancestors uuid[] not null default '{}';
alter table runs add column head_run_id uuid;
alter table step_runs add column override jsonb;

-- Backfill: every run made before this revision continued its root's matter.
with recursive t as (
  select id, array[]::uuid[] as anc from runs where parent_run_id is null
  union all
  select r.id, t.anc || r.parent_run_id from runs r join t on r.parent_run_id = t.id
)
update runs r set ancestors = t.anc, head_run_id = case when r.parent_run_id is null then null else r.root_run_id end
from t where t.id = r.id and r.parent_run_id is not null;

-- When a resumed run succeeds, every not-succeeded run whose matter it finished is resolved by it:
-- the runs whose head is the run itself or one of its ancestors. First success wins (never rewritten).
create function meshhook_resolve_lineage() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  update runs set resolved_by = new.id
  where root_run_id = new.root_run_id and resolved_by is null and status <> 'succeeded'
    and coalesce(head_run_id, id) = any(new.ancestors || new.id);
  return null;
end $$;
create trigger trg_runs_resolve_lineage after update of status on runs for each row
  when (new.status = 'succeeded' and old.status is distinct from 'succeeded' and new.parent_run_id is not null)
  execute function meshhook_resolve_lineage();

update runs p set resolved_by = s.id
from (select distinct on (r.id) r.id as rid, c.id
      from runs r join runs c on c.root_run_id = r.root_run_id and c.status = 'succeeded'
                              and c.parent_run_id is not null
                              and coalesce(r.head_run_id, r.id) = any(c.ancestors || c.id)
      where r.status <> 'succeeded'
      order by r.id, c.finished_at nulls last, c.id) s
where p.id = s.rid;

-- The console's "needs attention" list: GET /runs?unresolved=true, newest first.
create index ix_runs_unresolved_project on runs (project_id, created_at desc, id desc)
  where status in ('failed', 'paused', 'cancelled') and resolved_by is null;
create index ix_runs_unresolved on runs (created_at desc, id desc)
  where status in ('failed', 'paused', 'cancelled') and resolved_by is null;
"""

DOWNGRADE = r"""
drop index if exists ix_runs_unresolved;
drop index if exists ix_runs_unresolved_project;
drop trigger if exists trg_runs_resolve_lineage on runs;
drop function if exists meshhook_resolve_lineage();
alter table step_runs drop column if exists override;
alter table runs drop column if exists head_run_id;
alter table runs drop column if exists ancestors;
alter table runs drop column if exists rerun;
alter table runs drop column if exists resolved_by;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
