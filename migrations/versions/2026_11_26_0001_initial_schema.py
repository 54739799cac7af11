"""Initial schema: Supabase-compatible roles and auth functions, every table of DESIGN §3,
row-level security keyed on project membership, append-only audit log, immutable versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
from migrations.sqlscript import run_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Supabase roles and auth helpers, only when missing (a Supabase database has them).
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
  if not pg_has_role(current_user, 'authenticated', 'MEMBER') then
    execute format('grant authenticated to %I', current_user);
  end if;
end $$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

do $$ begin
  if not exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where n.nspname = 'auth' and p.proname = 'uid') then
    create function auth.uid() returns uuid language sql stable as $f$
      select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                             (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')), '')::uuid
    $f$;
    comment on function auth.uid() is 'created by meshhook';
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;
  if not exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where n.nspname = 'auth' and p.proname = 'jwt') then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                      nullif(current_setting('request.jwt.claims', true), ''))::jsonb
    $f$;
    comment on function auth.jwt() is 'created by meshhook';
    grant execute on function auth.jwt() to anon, authenticated, service_role;
  end if;
end $$;

-- Membership helpers. SECURITY DEFINER so policies can read project_members without
-- recursing into its own policies.
create function meshhook_role_rank(r text) returns int language sql immutable as $$
  select case r when 'owner' then 3 when 'editor' then 2 when 'viewer' then 1 else 0 end
$$;

create table projects (
  id uuid primary key,
  name text not null check (char_length(name) between 1 and 200),
  created_by uuid not null,
  created_at timestamptz not null default now()
);

create table project_members (
  project_id uuid not null references projects(id) on delete cascade,
  user_id uuid not null,
  role text not null check (role in ('owner', 'editor', 'viewer')),
  created_at timestamptz not null default now(),
  constraint pk_project_members primary key (project_id, user_id)
);
create index ix_project_members_user on project_members (user_id);

-- plpgsql rather than SQL: a SECURITY DEFINER SQL function cannot be inlined and is planned
-- again on every call, while plpgsql keeps its plan; with ~15 policy call sites per resume this
-- cut PostgreSQL CPU per resume by about a third (bench/).
create function meshhook_has_role(p uuid, min_role text) returns boolean
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
  return exists (select 1 from project_members m
                 where m.project_id = p and m.user_id = auth.uid()
                   and meshhook_role_rank(m.role) >= meshhook_role_rank(min_role));
end $$;

create function meshhook_projects(min_role text) returns setof uuid
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
  return query select m.project_id from project_members m
    where m.user_id = auth.uid() and meshhook_role_rank(m.role) >= meshhook_role_rank(min_role);
end $$;

-- The creator of a project becomes its owner, in the same statement.
create function meshhook_add_owner() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  insert into project_members (project_id, user_id, role) values (new.id, new.created_by, 'owner');
  return new;
end $$;
create trigger trg_projects_owner after insert on projects for each row execute function meshhook_add_owner();

create table secrets (
  project_id uuid not null references projects(id) on delete cascade,
  name text not null check (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$'),
  nonce bytea not null,
  ciphertext bytea not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint pk_secrets primary key (project_id, name)
);

-- Child rows carry their parent's project_id and composite foreign keys pin it to the
-- parent's, so a policy check on project_id also covers the parent: an editor of one project
-- cannot attach a run, version, step or event to another tenant's workflow or run.
create table workflows (
  id uuid primary key,
  project_id uuid not null references projects(id) on delete cascade,
  slug text not null check (slug ~ '^[a-z0-9][a-z0-9_-]{0,99}$'),
  name text not null check (char_length(name) between 1 and 200),
  webhook_secret_nonce bytea not null,
  webhook_secret_ct bytea not null,
  latest_version int not null default 0,
  created_by uuid,
  created_at timestamptz not null default now(),
  constraint uq_workflows_project_slug unique (project_id, slug),
  constraint uq_workflows_id_project unique (id, project_id)
);

create table workflow_versions (
  workflow_id uuid not null,
  project_id uuid not null references projects(id),
  version int not null check (version >= 1),
  definition jsonb not null,
  created_by uuid,
  created_at timestamptz not null default now(),
  constraint pk_workflow_versions primary key (workflow_id, version),
  constraint fk_workflow_versions_workflow foreign key (workflow_id, project_id) references workflows (id, project_id)
);

create function meshhook_immutable() returns trigger language plpgsql as $$
begin
  raise exception '% is append-only: % is not allowed', tg_table_name, tg_op using errcode = 'insufficient_privilege';
end $$;
create trigger trg_workflow_versions_immutable before update or delete on workflow_versions
  for each row execute function meshhook_immutable();

create table runs (
  id uuid primary key,
  project_id uuid not null references projects(id),
  workflow_id uuid not null,
  workflow_version int not null,
  status text not null check (status in ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
  trigger text not null check (trigger in ('api', 'webhook', 'resume')),
  input jsonb not null default '{}'::jsonb,
  error jsonb,
  parent_run_id uuid,
  root_run_id uuid not null,
  resumed_from_step text,
  resume_reason text,
  created_by uuid,
  delivery_id text,
  control text check (control in ('cancel', 'pause')),
  wake_at timestamptz,
  lease_owner text,
  lease_expires_at timestamptz,
  created_at timestamptz not null default clock_timestamp(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default clock_timestamp(),
  constraint uq_runs_id_project unique (id, project_id),
  constraint fk_runs_version foreign key (workflow_id, workflow_version) references workflow_versions (workflow_id, version),
  constraint fk_runs_workflow foreign key (workflow_id, project_id) references workflows (id, project_id),
  constraint fk_runs_parent foreign key (parent_run_id, project_id) references runs (id, project_id),
  constraint fk_runs_root foreign key (root_run_id, project_id) references runs (id, project_id)
);
-- A double click can never start two resumed runs of one parent.
create unique index uq_runs_one_active_child on runs (parent_run_id)
  where parent_run_id is not null and status in ('queued', 'running');
create unique index uq_runs_delivery on runs (workflow_id, delivery_id) where delivery_id is not null;
create index ix_runs_project_created on runs (project_id, created_at desc, id desc);
create index ix_runs_created on runs (created_at desc, id desc);
create index ix_runs_workflow_created on runs (workflow_id, created_at desc, id desc);
create index ix_runs_project_status_created on runs (project_id, status, created_at desc, id desc);
create index ix_runs_parent on runs (parent_run_id) where parent_run_id is not null;
create index ix_runs_root on runs (root_run_id);
create index ix_runs_claimable on runs (wake_at nulls first, created_at) where status in ('queued', 'running');

create table step_runs (
  id uuid primary key,
  run_id uuid not null,
  project_id uuid not null,
  step_key text not null,
  step_type text not null,
  position int not null default 0,
  status text not null check (status in ('pending', 'running', 'succeeded', 'failed', 'paused', 'skipped', 'cancelled')),
  attempt int not null default 0,
  input jsonb,
  output jsonb,
  output_truncated boolean not null default false,
  error jsonb,
  attempts jsonb not null default '[]'::jsonb,
  wake_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  reused_from uuid,
  constraint uq_step_runs_run_key unique (run_id, step_key),
  constraint fk_step_runs_run foreign key (run_id, project_id) references runs (id, project_id) on delete cascade
);

create table run_events (
  id bigint generated always as identity primary key,
  run_id uuid not null,
  project_id uuid not null,
  type text not null,
  step_key text,
  payload jsonb not null default '{}'::jsonb,
  at timestamptz not null default clock_timestamp(),
  constraint fk_run_events_run foreign key (run_id, project_id) references runs (id, project_id) on delete cascade
);
create index ix_run_events_run on run_events (run_id, id);

-- Event streams: one notification per run per statement (and Postgres folds duplicates within a
-- transaction); a statement-level trigger costs one call however many events a statement writes.
create function meshhook_notify_event() returns trigger language plpgsql as $$
begin
  perform pg_notify('meshhook_events', r.run_id::text) from (select distinct run_id from new_events) r;
  return null;
end $$;
create trigger trg_run_events_notify after insert on run_events referencing new table as new_events
  for each statement execute function meshhook_notify_event();

create table audit_log (
  id bigint generated always as identity primary key,
  action text not null,
  outcome text not null check (outcome in ('accepted', 'denied', 'rejected')),
  actor_id uuid,
  project_id uuid,
  run_id uuid,
  step_key text,
  new_run_id uuid,
  reason text,
  status_code int,
  request_id text,
  ip text,
  user_agent text,
  detail jsonb not null default '{}'::jsonb,
  at timestamptz not null default clock_timestamp()
);
create index ix_audit_project on audit_log (project_id, id desc);
create index ix_audit_run on audit_log (run_id) where run_id is not null;
create trigger trg_audit_append_only before update or delete on audit_log
  for each row execute function meshhook_immutable();
create trigger trg_audit_no_truncate before truncate on audit_log
  for each statement execute function meshhook_immutable();

create table idempotency_records (
  user_id uuid not null,
  scope text not null,
  key text not null check (char_length(key) between 1 and 255),
  request_hash text not null,
  status_code int not null,
  response jsonb not null,
  created_at timestamptz not null default now(),
  constraint pk_idempotency_records primary key (user_id, scope, key)
);

-- Row-level security: every tenant table, policies keyed on membership.
alter table projects enable row level security;
alter table project_members enable row level security;
alter table secrets enable row level security;
alter table workflows enable row level security;
alter table workflow_versions enable row level security;
alter table runs enable row level security;
alter table step_runs enable row level security;
alter table run_events enable row level security;
alter table audit_log enable row level security;
alter table idempotency_records enable row level security;

create policy projects_select on projects for select to authenticated
  using (id in (select meshhook_projects('viewer')));
create policy projects_insert on projects for insert to authenticated
  with check (created_by = (select auth.uid()));

create policy members_select on project_members for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy members_insert on project_members for insert to authenticated
  with check (meshhook_has_role(project_id, 'owner'));
create policy members_update on project_members for update to authenticated
  using (meshhook_has_role(project_id, 'owner')) with check (meshhook_has_role(project_id, 'owner'));

create policy secrets_select on secrets for select to authenticated
  using (meshhook_has_role(project_id, 'editor'));
create policy secrets_insert on secrets for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor'));
create policy secrets_update on secrets for update to authenticated
  using (meshhook_has_role(project_id, 'editor')) with check (meshhook_has_role(project_id, 'editor'));

create policy workflows_select on workflows for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy workflows_insert on workflows for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor'));
create policy workflows_update on workflows for update to authenticated
  using (meshhook_has_role(project_id, 'editor')) with check (meshhook_has_role(project_id, 'editor'));

create policy versions_select on workflow_versions for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy versions_insert on workflow_versions for insert to authenticated
  with check (meshhook_has_role(project_id, 'editor'));

create policy runs_select on runs for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy runs_insert on runs for insert to authenticated
  with check (project_id in (select meshhook_projects('editor')) and created_by = (select auth.uid()));
create policy runs_update on runs for update to authenticated
  using (project_id in (select meshhook_projects('editor')))
  with check (project_id in (select meshhook_projects('editor')));

create policy steps_select on step_runs for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy steps_insert on step_runs for insert to authenticated
  with check (project_id in (select meshhook_projects('editor')));
-- Editors cancel paused runs (nothing is in flight, so no worker is involved).
create policy steps_update on step_runs for update to authenticated
  using (project_id in (select meshhook_projects('editor')))
  with check (project_id in (select meshhook_projects('editor')));

create policy events_select on run_events for select to authenticated
  using (project_id in (select meshhook_projects('viewer')));
create policy events_insert on run_events for insert to authenticated
  with check (project_id in (select meshhook_projects('editor')));

create policy audit_select on audit_log for select to authenticated
  using (project_id in (select meshhook_projects('owner')));
create policy audit_insert on audit_log for insert to authenticated
  with check (actor_id = (select auth.uid()) and project_id in (select meshhook_projects('editor')));

create policy idem_select on idempotency_records for select to authenticated
  using (user_id = (select auth.uid()));
create policy idem_insert on idempotency_records for insert to authenticated
  with check (user_id = (select auth.uid()));
create policy idem_update on idempotency_records for update to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

-- Grants: only what the API does as a user. The worker uses the login role.
grant usage on schema public to authenticated, service_role;
grant select, insert on projects to authenticated;
grant select, insert, update on project_members to authenticated;
grant select (project_id, name, created_at, updated_at), insert, update on secrets to authenticated;
grant select (id, project_id, slug, name, latest_version, created_by, created_at), insert, update (latest_version)
  on workflows to authenticated;
grant select, insert on workflow_versions to authenticated;
grant select, insert, update (status, control, finished_at, updated_at, error, wake_at) on runs to authenticated;
grant select, insert, update (status, finished_at) on step_runs to authenticated;
grant select, insert on run_events to authenticated;
grant select, insert on audit_log to authenticated;
grant select, insert, update on idempotency_records to authenticated;
grant execute on function meshhook_has_role(uuid, text), meshhook_projects(text), meshhook_role_rank(text)
  to authenticated, service_role;
grant all on all tables in schema public to service_role;

-- Supabase Realtime: publish run, step and event changes (no-op on plain PostgreSQL).
do $$ begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    alter publication supabase_realtime add table runs, step_runs, run_events;
  end if;
end $$;
"""

DOWNGRADE = r"""
do $$ begin
  if exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    begin
      alter publication supabase_realtime drop table runs, step_runs, run_events;
    exception when others then null;
    end;
  end if;
end $$;
drop table if exists idempotency_records;
drop table if exists audit_log;
drop table if exists run_events;
drop table if exists step_runs;
drop table if exists runs;
drop table if exists workflow_versions;
drop table if exists workflows;
drop table if exists secrets;
drop table if exists project_members;
drop table if exists projects;
drop function if exists meshhook_notify_event();
drop function if exists meshhook_immutable();
drop function if exists meshhook_add_owner();
drop function if exists meshhook_projects(text);
drop function if exists meshhook_has_role(uuid, text);
drop function if exists meshhook_role_rank(text);
do $$ begin
  if exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname = 'auth' and p.proname = 'uid'
               and obj_description(p.oid, 'pg_proc') = 'created by meshhook') then
    drop function auth.uid();
  end if;
  if exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where n.nspname = 'auth' and p.proname = 'jwt'
               and obj_description(p.oid, 'pg_proc') = 'created by meshhook') then
    drop function auth.jwt();
  end if;
end $$;
-- Roles are cluster-wide and may serve other databases: they stay.
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
