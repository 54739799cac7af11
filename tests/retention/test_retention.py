"""Retention: finished lineage trees older than MESHHOOK_RETENTION_DAYS disappear with their
steps and events (never half a tree), everything younger or unfinished stays, and audit rows are
pruned only by their own setting, through the one function the append-only trigger lets through."""
from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from app.db.engine import Database
from app.retention.service import Pruner
from app.settings import Settings
from tests import support
from tests.conftest import linear


async def failed_then_resumed(owner, world, *, finish_child: bool = True) -> tuple[str, str, str]:
    """A run that fails at `call`, and its resumed child (which succeeds, or stays paused)."""
    name = f"ret-{uuid.uuid4().hex[:8]}"
    tail = ("wait", "pause", {}) if not finish_child else ("done", "transform", {"expression": "`1`"})
    project = await owner.project()
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/flaky/{name}?fail=1", "retry": {"max_attempts": 1}}),
        tail))
    parent = await owner.wait(await owner.start(wf["id"]))
    assert parent["status"] == "failed"
    r = await owner.resume(parent["id"], "call")
    assert r.status_code == 202, r.text
    child = await owner.wait(r.json()["id"])
    assert child["status"] == ("succeeded" if finish_child else "paused")
    return project, parent["id"], child["id"]


async def age(db, run_ids: list[str], days: float) -> None:
    await db.execute("update runs set finished_at = coalesce(finished_at, now()) - make_interval(days => $2),"
                     " created_at = created_at - make_interval(days => $2) where id = any($1::uuid[])",
                     [uuid.UUID(r) for r in run_ids], days)


async def counts(db, run_ids: list[str]) -> tuple[int, int, int]:
    ids = [uuid.UUID(r) for r in run_ids]
    return (await db.fetchval("select count(*) from runs where id = any($1::uuid[])", ids),
            await db.fetchval("select count(*) from step_runs where run_id = any($1::uuid[])", ids),
            await db.fetchval("select count(*) from run_events where run_id = any($1::uuid[])", ids))


@pytest.fixture
async def pruner_db(database_url):
    db = Database(database_url, pool_size=2, application_name="meshhook-test-retention")
    yield db
    await db.dispose()


async def test_old_finished_trees_go_with_their_steps_and_events_and_nothing_else(owner, world, db, pruner_db):
    _, old_parent, old_child = await failed_then_resumed(owner, world)
    _, mixed_parent, mixed_child = await failed_then_resumed(owner, world)
    _, paused_parent, paused_child = await failed_then_resumed(owner, world, finish_child=False)
    _, young_parent, young_child = await failed_then_resumed(owner, world)
    await age(db, [old_parent, old_child, mixed_parent, paused_parent, paused_child], 40)
    # mixed: the parent is old, but its resumed child finished today → the whole tree stays
    assert (await counts(db, [old_parent, old_child]))[2] > 0

    got = await Pruner(pruner_db, Settings(retention_days=30, retention_batch=1)).prune_once()

    assert await counts(db, [old_parent, old_child]) == (0, 0, 0)
    assert got["trees"] >= 1 and got["runs"] >= 2 and got["steps"] >= 4 and got["events"] >= 6
    for kept in (mixed_parent, mixed_child, paused_parent, paused_child, young_parent, young_child):
        assert (await owner.get(f"/runs/{kept}")).status_code == 200
    assert (await owner.get(f"/runs/{old_parent}")).status_code == 404
    assert (await owner.get(f"/runs/{old_child}/events")).status_code == 404
    lineage = (await owner.get(f"/runs/{mixed_child}/lineage")).json()
    assert mixed_parent in str(lineage)  # never a dangling parent_run_id
    # the audit row of the pruned resume keeps its meaning: same ids, still listed for the owner
    project = (await owner.run(young_parent))["project_id"]
    assert (await owner.get(f"/projects/{project}/audit?action=run.resume")).status_code == 200
    assert await db.fetchval("select count(*) from audit_log where run_id = $1 and new_run_id = $2",
                             uuid.UUID(old_parent), uuid.UUID(old_child)) == 1


async def test_nothing_is_pruned_without_the_settings(owner, world, db, pruner_db):
    _, parent, child = await failed_then_resumed(owner, world)
    await age(db, [parent, child], 4000)
    assert await Pruner(pruner_db, Settings()).prune_once() == {"trees": 0, "runs": 0, "steps": 0, "events": 0,
                                                                "audit": 0}
    assert (await counts(db, [parent, child]))[0] == 2
    await age(db, [parent, child], -4000)


async def insert_audit(db, at: datetime, reason: str) -> int:
    return await db.fetchval("insert into audit_log (action, outcome, reason, at) values ('test.retention', 'accepted',"
                             " $1, $2) returning id", reason, at)


async def test_audit_rows_are_pruned_only_by_their_own_setting_and_only_by_the_pruner(db, pruner_db):
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex
    old = await insert_audit(db, now - timedelta(days=400), tag)
    recent = await insert_audit(db, now - timedelta(days=10), tag)

    await Pruner(pruner_db, Settings(retention_days=1)).prune_once()  # run retention does not touch audit
    assert await db.fetchval("select count(*) from audit_log where reason = $1", tag) == 2

    got = await Pruner(pruner_db, Settings(audit_retention_days=365)).prune_once()
    assert got["audit"] >= 1
    assert [r["id"] for r in await db.fetch("select id from audit_log where reason = $1", tag)] == [recent]
    assert old != recent

    # Nobody else may delete or change audit rows: not the superuser, not with the pruner's flag forged
    async with db.acquire() as c:
        for sql in ("delete from audit_log where id = $1", "update audit_log set reason = 'x' where id = $1"):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await c.execute(sql, recent)
        async with c.transaction():
            await c.execute("select set_config('meshhook.audit_prune_before', now()::text, true)")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await c.execute("delete from audit_log where id = $1", recent)
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="younger than a day"):
            await c.fetchval("select meshhook_prune_audit(now() - interval '1 hour', 10)")
        role = await c.fetchval("select has_function_privilege('authenticated', 'meshhook_prune_audit(timestamptz,int)',"
                                " 'execute')")
        assert role is False
    assert await db.fetchval("select count(*) from audit_log where id = $1", recent) == 1


async def test_a_worker_with_retention_days_prunes_by_itself(owner, world, db, service_env, logs_dir):
    _, parent, child = await failed_then_resumed(owner, world)
    await age(db, [parent, child], 3)
    env = dict(service_env, MESHHOOK_RETENTION_DAYS="2", MESHHOOK_RETENTION_INTERVAL_S="0.5")
    worker = support.start_worker(env, logs_dir / "retention-worker.log", "pruner")
    try:
        async def gone():
            return (await counts(db, [parent, child])) == (0, 0, 0)

        await support.wait_for(gone, 60, 0.2, "the worker to prune the old tree")
        assert '"msg":"pruned"' in worker.text().replace(" ", "")
    finally:
        await asyncio.to_thread(worker.terminate)
