"""SQL of retention (service scope: the worker's login role bypasses RLS)."""

from __future__ import annotations

from datetime import datetime

from app.db.engine import Tx

# Whole lineage trees whose every run is finished and finished before the cutoff, oldest first. Only
# the root row is locked (SKIP LOCKED: pruners on several workers share the work, and a tree someone
# holds waits for the next pass); the tree goes in one statement, so no parent_run_id is left dangling
# (the foreign keys are checked at the end of the statement). Events and steps are deleted explicitly
# rather than by cascade, so the counts are known.
_PRUNE_RUNS = """
with roots as (
  select r.id from runs r
  where r.status in ('succeeded', 'failed', 'cancelled') and r.finished_at < $1 and r.id = r.root_run_id
    and not exists (select 1 from runs c where c.root_run_id = r.id
                    and (c.status not in ('succeeded', 'failed', 'cancelled') or c.finished_at is null
                         or c.finished_at >= $1))
  order by r.finished_at
  limit $2
  for update of r skip locked
), tree as (
  select t.id from runs t where t.root_run_id in (select id from roots)
), ev as (
  delete from run_events e where e.run_id in (select id from tree) returning 1
), st as (
  delete from step_runs s where s.run_id in (select id from tree) returning 1
), ru as (
  delete from runs d where d.id in (select id from tree) returning 1
)
select (select count(*) from roots) as trees, (select count(*) from ru) as runs,
       (select count(*) from st) as steps, (select count(*) from ev) as events
"""


class RetentionRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def prune_runs(self, before: datetime, max_trees: int) -> dict[str, int]:
        row = await self.tx.fetchrow(_PRUNE_RUNS, before, max_trees)
        assert row is not None
        return {k: int(row[k]) for k in ("trees", "runs", "steps", "events")}

    async def prune_audit(self, before: datetime, max_rows: int) -> int:
        return int(await self.tx.fetchval("select meshhook_prune_audit($1, $2)", before, max_rows))
