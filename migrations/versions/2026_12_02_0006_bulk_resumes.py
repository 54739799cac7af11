"""Bulk resume (DESIGN §10.3): a durable job, its frozen list of matched runs and its progress
events, with row-level security keyed on project membership.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- One row per bulk resume. The worker that holds the lease drives it; `next_position` is the
-- first item not yet handed to a resume (cancel skips exactly the items from there on).
create table bulk_resumes (
  id uuid primary key,
  project_id uuid not null references projects(id) on delete cascade,
  workflow_id uuid not null,
  status text not null check (status in ('running', 'succeeded', 'cancelled', 'failed')),
  request jsonb not null,
  request_hash text not null,
  idempotency_key text check (char_length(idempotency_key) between 1 and 255),
  max_per_second int not null check (max_per_second between 1 and 1000),
  matched int not null check (matched between 0 and 10000),
  accepted int not null default 0,
  skipped int not null default 0,
  rejected int not null default 0,
  next_position int not null default 0,
  error text,
  crashes int not null default 0,
  created_by uuid not null,
  request_id text,
  ip text,
  lease_owner text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default clock_timestamp(),
  started_at timestamptz,
  cancelled_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default clock_timestamp(),
  constraint uq_bulk_resumes_id_project unique (id, project_id),
  constraint fk_bulk_resumes_workflow foreign key (workflow_id, project_id) references workflows (id, project_id)
);
-- The same Idempotency-Key from the same user names one job.
create unique index uq_bulk_resumes_idempotency on bulk_resumes (created_by, idempotency_key)
  where idempotency_key is not null;
create index ix_bulk_resumes_project on bulk_resumes (project_id, created_at desc);
create index ix_bulk_resumes_unfinished on bulk_resumes (created_at) where finished_at is null;

-- The runs a job matched, frozen at creation, in the order they are resumed.
create table bulk_resume_items (
  bulk_id uuid not null,
  position int not null,
  project_id uuid not null,
  run_id uuid not null,
  from_step text,
  outcome text not null default 'pending' check (outcome in ('pending', 'accepted', 'skipped', 'rejected')),
  new_run_id uuid,
  why text,
  finished_at timestamptz,
  constraint pk_bulk_resume_items primary key (bulk_id, position),
  constraint fk_bulk_resume_items_job foreign key (bulk_id, project_id)
    references bulk_resumes (id, project_id) on delete cascade,
  constraint fk_bulk_resume_items_run foreign key (run_id, project_id) references runs (id, project_id)
    on delete cascade
);
create index ix_bulk_resume_items_run on bulk_resume_items (run_id);

create table bulk_resume_events (
  id bigint generated always as identity primary key,
  bulk_id uuid not null,
  project_id uuid not null,
  type text not null,
  payload jsonb not null default '{}'::jsonb,
  at timestamptz not null default clock_timestamp(),
  constraint fk_bulk_resume_events_job foreign key (bulk_id, project_id)
    references bulk_resumes (id, project_id) on delete cascade
);
create index ix_bulk_resume_events_bulk on bulk_resume_events (bulk_id, id);

-- Live streams listen on the run events' channel; a job id never collides with a run id.
create function meshhook_notify_bulk_event() returns trigger language plpgsql as $$
begin
  perform pg_notify('meshhook_events', r.bulk_id::text) from (select distinct bulk_id from new_events) r;
  return null;
end $$;
create trigger trg_bulk_resume_events_notify after insert on bulk_resume_events referencing new table as new_events
  for each statement execute function meshhook_notify_bulk_event();

alter table bulk_resumes enable row level security;
alter table bulk_resume_items enable row level security;
alter table bulk_resume_events enable row level security;

create policy bulk_resumes_select on bulk_resumes for select to authenticated
  using (meshhook_has_role(project_id, 'viewer'));
create policy bulk_resumes_insert on bulk_resumes for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor') and created_by = (select auth.uid()));
create policy bulk_resumes_update on bulk_resumes for update to authenticated
  using (meshhook_has_role(project_id, 'editor')) with check (meshhook_has_role(project_id, 'editor'));

create policy bulk_items_select on bulk_resume_items for select to authenticated
  using (meshhook_has_role(project_id, 'viewer'));
-- Items only into one's own job: the worker resumes them as the job's creator.
create policy bulk_items_insert on bulk_resume_items for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor')
              and exists (select 1 from bulk_resumes b where b.id = bulk_id and b.created_by = (select auth.uid())));
create policy bulk_items_update on bulk_resume_items for update to authenticated
  using (meshhook_has_role(project_id, 'editor')) with check (meshhook_has_role(project_id, 'editor'));

create policy bulk_events_select on bulk_resume_events for select to authenticated
  using (meshhook_has_role(project_id, 'viewer'));
create policy bulk_events_insert on bulk_resume_events for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor'));

-- The API creates, reads and cancels; the worker (login role) drives.
grant select (id, project_id, workflow_id, status, request, request_hash, idempotency_key, max_per_second, matched,
              accepted, skipped, rejected, next_position, error, created_by, created_at, started_at,
              cancelled_at, finished_at, updated_at),
      insert,
      update (status, skipped, cancelled_at, updated_at)
  on bulk_resumes to authenticated;
grant select, insert, update (outcome, why, finished_at) on bulk_resume_items to authenticated;
grant select, insert on bulk_resume_events to authenticated;
grant all on bulk_resumes, bulk_resume_items, bulk_resume_events to service_role;
"""

DOWNGRADE = r"""
drop table if exists bulk_resume_events;
drop table if exists bulk_resume_items;
drop table if exists bulk_resumes;
drop function if exists meshhook_notify_bulk_event();
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
