"""Resume speed (issue 17): membership checks that cost the same however large the database
and however many projects the caller belongs to, and time-ordered ids for new step rows.

* `meshhook_has_role(uuid, text)` reads `auth.uid()` once (it was inlined into a filter and
  parsed the JWT claims for every `project_members` row) and looks up THIS row's project on
  the `project_members` primary key.
* `meshhook_projects(text)` reads `auth.uid()` once and uses `ix_project_members_user`.
* `ix_project_members_user (user_id)` becomes `(user_id, project_id) include (role)`, so a
  membership check is a point lookup whichever index the planner picks.
* The policies of the tables a run touches (runs, step_runs, run_events inserts, audit inserts,
  project_members reads) check `meshhook_has_role(project_id, …)` per row instead of building
  the caller's whole membership set at every policy site (its cost grew with the caller's
  memberships: 0.020 → 0.124 ms per site from 1 to 201 projects).
  Every statement of a user's request is still checked by RLS keyed on `auth.uid()`
  membership, with the same roles as before.
* `meshhook_uuidv7()`: a UUIDv7 (RFC 9562) for rows whose id the database makes (steps).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
create or replace function meshhook_has_role(p uuid, min_role text) returns boolean
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  uid constant uuid := auth.uid();
  r text;
begin
  select m.role into r from project_members m where m.project_id = p and m.user_id = uid;
  return r is not null and meshhook_role_rank(r) >= meshhook_role_rank(min_role);
end $$;

create or replace function meshhook_projects(min_role text) returns setof uuid
language plpgsql stable security definer set search_path = public, pg_temp as $$
declare
  uid constant uuid := auth.uid();
  least_rank constant int := meshhook_role_rank(min_role);
begin
  return query select m.project_id from project_members m
    where m.user_id = uid and meshhook_role_rank(m.role) >= least_rank;
end $$;

-- A UUIDv7: 48 bits of Unix milliseconds, then a v4's random bits with the version set to 7
-- (the v4 version nibble 0100 becomes 0111; the variant bits stay 10).
create function meshhook_uuidv7() returns uuid language sql volatile parallel safe as $$
  select encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
           substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
           from 1 for 6), 52, 1), 53, 1), 'hex')::uuid
$$;
grant execute on function meshhook_uuidv7() to authenticated, service_role;

-- One index answers both questions a policy asks of project_members: "is the caller a member of
-- this project" (a point lookup on both columns, whichever index the planner picks; with
-- ix_project_members_user the generic plan of meshhook_has_role scanned all of the caller's
-- memberships) and "which projects is the caller a member of" (an index-only scan).
create index ix_project_members_user_project on project_members (user_id, project_id) include (role);
drop index ix_project_members_user;

-- The caller's own memberships, for policies: read with the view owner's rights, so a policy on
-- another table can look a membership up without a call into a SECURITY DEFINER function (about
-- 16 us each, at every checked row) and without recursing into project_members' own policies.
-- A security barrier: a caller's own functions never see rows of other users.
create view meshhook_memberships with (security_barrier) as
  select m.project_id, meshhook_role_rank(m.role) as rank from project_members m
  where m.user_id = (select auth.uid());
grant select on meshhook_memberships to authenticated;

-- Policies of the tables a run touches: a point lookup of the row's own project in the caller's
-- memberships (an index-only scan on both columns) instead of building the whole membership set
-- at every policy site, whose cost grew with the caller's memberships. `offset 0` keeps the
-- planner from turning the EXISTS into that set (a hashed subplan). Listing
-- policies (projects, workflows, versions, events, audit reads) keep the set: one build serves a
-- whole page of rows. Ranks: viewer 1, editor 2, owner 3 (meshhook_role_rank).
alter policy members_select on project_members using (meshhook_has_role(project_id, 'viewer'));
alter policy runs_select on runs using (exists (select 1 from meshhook_memberships m where m.project_id = runs.project_id and m.rank >= 1 offset 0));
alter policy runs_insert on runs
  with check (created_by = (select auth.uid()) and exists (select 1 from meshhook_memberships m where m.project_id = runs.project_id and m.rank >= 2 offset 0));
alter policy runs_update on runs using (exists (select 1 from meshhook_memberships m where m.project_id = runs.project_id and m.rank >= 2 offset 0)) with check (exists (select 1 from meshhook_memberships m where m.project_id = runs.project_id and m.rank >= 2 offset 0));
alter policy steps_select on step_runs using (exists (select 1 from meshhook_memberships m where m.project_id = step_runs.project_id and m.rank >= 1 offset 0));
alter policy steps_insert on step_runs with check (exists (select 1 from meshhook_memberships m where m.project_id = step_runs.project_id and m.rank >= 2 offset 0));
alter policy steps_update on step_runs using (exists (select 1 from meshhook_memberships m where m.project_id = step_runs.project_id and m.rank >= 2 offset 0)) with check (exists (select 1 from meshhook_memberships m where m.project_id = step_runs.project_id and m.rank >= 2 offset 0));
alter policy events_insert on run_events with check (exists (select 1 from meshhook_memberships m where m.project_id = run_events.project_id and m.rank >= 2 offset 0));
alter policy audit_insert on audit_log
  with check (actor_id = (select auth.uid()) and exists (select 1 from meshhook_memberships m where m.project_id = audit_log.project_id and m.rank >= 2 offset 0));

-- The run tables grow by millions of rows; with the default scale factors their statistics are
-- refreshed only after 10 % of them changed. `meshhook migrate` analyzes after every upgrade.
alter table runs set (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
alter table step_runs set (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_scale_factor = 0.05);
"""

DOWNGRADE = r"""
alter table runs reset (autovacuum_analyze_scale_factor, autovacuum_vacuum_scale_factor);
alter table step_runs reset (autovacuum_analyze_scale_factor, autovacuum_vacuum_scale_factor);
alter policy members_select on project_members using (project_id in (select meshhook_projects('viewer')));
alter policy runs_select on runs using (project_id in (select meshhook_projects('viewer')));
alter policy runs_insert on runs
  with check (project_id in (select meshhook_projects('editor')) and created_by = (select auth.uid()));
alter policy runs_update on runs
  using (project_id in (select meshhook_projects('editor')))
  with check (project_id in (select meshhook_projects('editor')));
alter policy steps_select on step_runs using (project_id in (select meshhook_projects('viewer')));
alter policy steps_insert on step_runs with check (project_id in (select meshhook_projects('editor')));
alter policy steps_update on step_runs
  using (project_id in (select meshhook_projects('editor')))
  with check (project_id in (select meshhook_projects('editor')));
alter policy events_insert on run_events with check (project_id in (select meshhook_projects('editor')));
alter policy audit_insert on audit_log
  with check (actor_id = (select auth.uid()) and project_id in (select meshhook_projects('editor')));

create index ix_project_members_user on project_members (user_id);
drop index ix_project_members_user_project;

drop view if exists meshhook_memberships;
drop function if exists meshhook_uuidv7();

create or replace function meshhook_has_role(p uuid, min_role text) returns boolean
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
  return exists (select 1 from project_members m
                 where m.project_id = p and m.user_id = auth.uid()
                   and meshhook_role_rank(m.role) >= meshhook_role_rank(min_role));
end $$;

create or replace function meshhook_projects(min_role text) returns setof uuid
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
  return query select m.project_id from project_members m
    where m.user_id = auth.uid() and meshhook_role_rank(m.role) >= meshhook_role_rank(min_role);
end $$;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
