"""Retention: indexes that let the worker find old finished runs and old audit rows without
scanning, and the one way audit rows can ever be deleted — `meshhook_prune_audit(before, max_rows)`,
a SECURITY DEFINER function; the append-only trigger lets a DELETE through only when it comes from
inside that function, for rows older than the cutoff the function was given (at least a day old).
UPDATE stays impossible, and so does any other DELETE, the superuser's included.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
create index ix_runs_finished on runs (finished_at) where status in ('succeeded', 'failed', 'cancelled');
create index ix_audit_at on audit_log (at);

create function meshhook_audit_append_only() returns trigger language plpgsql as $$
declare
  cutoff text;
  ctx text;
begin
  if tg_op = 'DELETE' then
    cutoff := nullif(current_setting('meshhook.audit_prune_before', true), '');
    if cutoff is not null and old.at < cutoff::timestamptz then
      get diagnostics ctx = pg_context;
      -- the flag alone could be set by anyone; the call stack says who is deleting
      if ctx ~ '(^|\n)PL/pgSQL function meshhook_prune_audit\(timestamp with time zone,integer\) line [0-9]+ at SQL statement' then
        return old;
      end if;
    end if;
  end if;
  raise exception '% is append-only: % is not allowed', tg_table_name, tg_op using errcode = 'insufficient_privilege';
end $$;

drop trigger trg_audit_append_only on audit_log;
create trigger trg_audit_append_only before update or delete on audit_log
  for each row execute function meshhook_audit_append_only();

-- Deletes at most max_rows audit rows older than `before` (which must be at least a day ago),
-- oldest first, skipping rows another pruner holds; returns how many went.
create function meshhook_prune_audit(before timestamptz, max_rows int) returns int
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  n int;
begin
  if before is null or before > now() - interval '1 day' then
    raise exception 'audit rows younger than a day are never pruned' using errcode = 'insufficient_privilege';
  end if;
  perform set_config('meshhook.audit_prune_before', before::text, true);
  delete from audit_log where id in (
    select id from audit_log where at < before order by at limit greatest(max_rows, 0) for update skip locked);
  get diagnostics n = row_count;
  perform set_config('meshhook.audit_prune_before', '', true);
  return n;
end $$;
revoke all on function meshhook_prune_audit(timestamptz, int) from public;
grant execute on function meshhook_prune_audit(timestamptz, int) to service_role;
"""

DOWNGRADE = r"""
drop function if exists meshhook_prune_audit(timestamptz, int);
drop trigger if exists trg_audit_append_only on audit_log;
create trigger trg_audit_append_only before update or delete on audit_log
  for each row execute function meshhook_immutable();
drop function if exists meshhook_audit_append_only();
drop index if exists ix_audit_at;
drop index if exists ix_runs_finished;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
