"""Engine: fair share and exact step accounting.

- `meshhook_step_rank(status)`: the order a step's status may only move forward in
  (pending → running → paused → succeeded/failed/skipped/cancelled); the engine's step write is
  guarded with it, so a late write can never regress a step.
- `step_runs.attempt_started_at`: when the step's current attempt was sent, written before the
  request goes out, so an attempt lost with its worker is recorded with its real start time.
- `ix_runs_project_leased`: the claim counts each project's leased running runs
  (MESHHOOK_PROJECT_MAX_RUNNING) from this small index instead of the runs table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
create function meshhook_step_rank(status text) returns int
  language sql immutable parallel safe
  return case status when 'pending' then 0 when 'running' then 1 when 'paused' then 2 else 3 end;

alter table step_runs add column attempt_started_at timestamptz;

create index ix_runs_project_leased on runs (project_id, lease_owner)
  where status = 'running' and lease_owner is not null;
"""

DOWNGRADE = r"""
drop index if exists ix_runs_project_leased;
alter table step_runs drop column if exists attempt_started_at;
drop function if exists meshhook_step_rank(text);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
