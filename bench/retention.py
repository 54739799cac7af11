"""`python -m bench.retention [--old-runs N] [--resumes N]`: what retention costs on a grown database.

Seeds (in SQL) N finished 10-step runs of another tenant that finished 60 days ago, each with its
steps and 12 events, plus failed parents to resume; starts `meshhook serve --no-worker`; measures
one-client resume latency over HTTP while nothing else runs, then again while the retention pruner
(app/retention, MESHHOOK_RETENTION_DAYS=30, default batch) deletes the old runs. Prints JSON:
rows deleted per second and the resume p50/p99 without and with pruning.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from bench import env
from bench.http import Connection
from bench.seed import INPUT, Seeder, init_json
from bench.stats import pct, r


async def grow(conn: asyncpg.Connection, seeder: Seeder, n_runs: int, chunk: int = 5000) -> None:
    wf = seeder.workflows[10]
    for start in range(0, n_runs, chunk):
        ids = [uuid.uuid4() for _ in range(min(chunk, n_runs - start))]
        async with conn.transaction():
            await conn.execute(
                "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input,"
                " root_run_id, created_by, created_at, started_at, finished_at)"
                " select r.id, $2, $3, 1, 'succeeded', 'api', $4, r.id, $5, t, t, t + interval '1 second'"
                " from unnest($1::uuid[]) with ordinality as r(id, o),"
                "      lateral (select now() - interval '60 days' + o * interval '1 ms' as t) ts",
                ids, seeder.project, wf, INPUT, seeder.owner)
            await conn.execute(
                "insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt,"
                " output, attempts, started_at, finished_at)"
                " select gen_random_uuid(), r.id, $2, 's' || i, 'transform', i - 1, 'succeeded', 1, $3::jsonb,"
                "   '[{\"attempt\": 1}]'::jsonb, now() - interval '60 days', now() - interval '60 days'"
                " from unnest($1::uuid[]) as r(id) cross join generate_series(1, 10) as i",
                ids, seeder.project, INPUT)
            await conn.execute(
                "insert into run_events (run_id, project_id, type, step_key, payload, at)"
                " select r.id, $2, case when i = 1 then 'run_started' when i = 12 then 'run_succeeded'"
                "   else 'step_succeeded' end, case when i between 2 and 11 then 's' || (i - 1) end, '{}'::jsonb,"
                "   now() - interval '60 days'"
                " from unnest($1::uuid[]) as r(id) cross join generate_series(1, 12) as i",
                ids, seeder.project)


async def resumes(port: int, token: str, parents: list[uuid.UUID]) -> list[float]:
    c = Connection("127.0.0.1", port)
    body = json.dumps({"from_step": "s5"}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    lat = []
    try:
        for pid in parents:
            raw = c.build("POST", f"/runs/{pid}/resume", headers, body)
            t = time.perf_counter()
            status, _h, resp = await c.send(raw)
            lat.append(time.perf_counter() - t)
            if status != 202:
                raise RuntimeError(f"resume answered {status}: {resp[:300]!r}")
    finally:
        await c.close()
    return lat


async def main(old_runs: int, n_resumes: int, batch: int) -> dict:
    from app.db.engine import Database
    from app.db.migrate import upgrade
    from app.retention.service import Pruner
    from app.settings import Settings

    admin = env.admin_url()
    name, url = await env.create_database(admin)
    conn = None
    api = None
    try:
        await asyncio.to_thread(upgrade, url)
        conn = await asyncpg.connect(url)
        await init_json(conn)
        tenant = Seeder(conn)
        await tenant.project_with_editors(1)
        await tenant.workflow(10)
        t0 = time.perf_counter()
        await grow(conn, tenant, old_runs)
        seeded_s = time.perf_counter() - t0
        me = Seeder(conn)
        await me.project_with_editors(1)
        await me.workflow(10)
        parents = await me.failed_parents(10, 2 * n_resumes + 20, 5)
        await conn.execute("analyze")
        rows_before = {t: await conn.fetchval(f"select count(*) from {t}") for t in ("runs", "step_runs", "run_events")}

        with tempfile.TemporaryDirectory(prefix="meshhook-retention-") as d:
            api, port = env.start_api(env.service_env(url), Path(d) / "api.log")
            token = env.token(me.editors[0])
            await resumes(port, token, parents[:20])  # warm-up
            quiet = await resumes(port, token, parents[20:20 + n_resumes])

            db = Database(url, pool_size=2, application_name="meshhook-retention-bench")
            pruner = Pruner(db, Settings(retention_days=30, retention_batch=batch))
            t0 = time.perf_counter()
            prune = asyncio.create_task(pruner.prune_once())
            during: list[float] = []
            rest = parents[20 + n_resumes:]
            while not prune.done() and rest:
                during += await resumes(port, token, rest[:5])
                rest = rest[5:]
            deleted = await prune
            prune_s = time.perf_counter() - t0
            await db.dispose()
            api.stop()
            api = None
        rows = deleted["runs"] + deleted["steps"] + deleted["events"]
        return {
            "old_runs": old_runs, "seed_s": r(seeded_s, 1), "rows_before": rows_before, "batch_trees": batch,
            "deleted": deleted, "prune_s": r(prune_s, 2), "rows_deleted_per_s": r(rows / prune_s, 0),
            "runs_deleted_per_s": r(deleted["runs"] / prune_s, 0),
            "resume_quiet_p50_ms": r(pct(quiet, 50) * 1e3), "resume_quiet_p99_ms": r(pct(quiet, 99) * 1e3),
            "resume_during_prune_p50_ms": r(pct(during, 50) * 1e3) if during else None,
            "resume_during_prune_p99_ms": r(pct(during, 99) * 1e3) if during else None,
            "resumes_during_prune": len(during),
        }
    finally:
        if api is not None:
            api.stop()
        if conn is not None:
            await conn.close()
        await env.drop_database(admin, name)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.retention")
    ap.add_argument("--old-runs", type=int, default=50_000)
    ap.add_argument("--resumes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.old_runs, a.resumes, a.batch)), indent=2))
