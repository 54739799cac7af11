"""One tenant cannot stall another: tenant B fills the engine with runs that trickle for a minute,
and tenant A's one-step run still starts and finishes at once. MESHHOOK_PROJECT_MAX_RUNNING caps
B across workers (checked in the database while it runs), and inside one worker B never holds every
slot. Real worker processes, a loopback upstream, the private PostgreSQL."""
from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.faults.conftest import percentile, record, start_worker
from tests.support import wait_for
from tests.upstream import SlowUpstream

EGRESS = {"MESHHOOK_EGRESS_ALLOW": "127.0.0.1"}


@pytest.fixture(scope="module")
def upstream():
    u = SlowUpstream()
    yield u
    u.close()


def definitions(upstream_url: str, name: str) -> tuple[dict, dict]:
    slow = {"nodes": [{"id": "start", "data": {"type": "webhook"}},
                      {"id": "call", "data": {"type": "http_call", "config": {
                          "url": f"{upstream_url}/trickle/{name}?bytes=60&every=1", "timeout_s": 90}}}],
            "edges": [{"source": "start", "target": "call"}]}
    quick = {"nodes": [{"id": "start", "data": {"type": "webhook"}},
                       {"id": "t", "data": {"type": "transform", "config": {"expression": "input.n"}}}],
             "edges": [{"source": "start", "target": "t"}]}
    return slow, quick


async def leased_running(db, project_id: str) -> int:
    return await db.fetchval(
        "select count(*) from runs where project_id = $1 and status = 'running' and lease_owner is not null"
        " and lease_expires_at > clock_timestamp()", uuid.UUID(project_id))


async def cancel_all(owner, run_ids: list[str]) -> None:
    for rid in run_ids:
        await owner.post(f"/runs/{rid}/cancel")


async def test_a_tenant_with_100_slow_runs_does_not_keep_another_waiting(faults_env, faults_logs, faults_db,
                                                                         make_user, upstream, procs):
    name = f"hog-{uuid.uuid4().hex[:8]}"
    slow, quick = definitions(upstream.url, name)
    b, a = make_user(), make_user()
    project_b, project_a = await b.project("tenant-b"), await a.project("tenant-a")
    wf_b = (await b.workflow(project_b, slow))["id"]
    wf_a = (await a.workflow(project_a, quick))["id"]
    env = {**faults_env, **EGRESS, "MESHHOOK_PROJECT_MAX_RUNNING": "16"}
    procs.append(start_worker(env, faults_logs, "fair-1"))
    procs.append(start_worker(env, faults_logs, "fair-2"))

    b_runs = [await b.start(wf_b) for _ in range(100)]

    async def b_saturated():
        return await leased_running(faults_db, project_b) >= 16

    await wait_for(b_saturated, 30, 0.1, "tenant B to fill its share")
    peak = 0
    waits = []
    try:
        for i in range(10):
            peak = max(peak, await leased_running(faults_db, project_b))
            rid = await a.start(wf_a, {"n": i})
            run = await a.wait(rid, timeout=20)
            assert run["status"] == "succeeded", run
            started = await faults_db.fetchval(
                "select extract(epoch from (select at from run_events where run_id = r.id and type = 'run_started'"
                " order by id limit 1) - r.created_at)::float8 from runs r where r.id = $1", uuid.UUID(rid))
            waits.append(started)
            peak = max(peak, await leased_running(faults_db, project_b))
        b_statuses = await faults_db.fetch("select status, count(*) from runs where id = any($1::uuid[]) group by 1",
                                           [uuid.UUID(r) for r in b_runs])
    finally:
        await cancel_all(b, b_runs)
    record("fair_share", b_runs=100, b_peak_running=peak, a_runs=len(waits),
           a_pickup_p50_ms=round(percentile(waits, 50) * 1e3, 1), a_pickup_p99_ms=round(percentile(waits, 99) * 1e3, 1))
    # B was still busy the whole time (nothing of B finished: each call takes a minute) ...
    assert {r["status"]: r["count"] for r in b_statuses}.get("succeeded", 0) == 0
    # ... never above its cap across both workers, and A was served all along.
    assert peak <= 16
    assert len(waits) == 10


async def test_inside_one_worker_a_project_never_holds_every_slot(faults_env, faults_logs, faults_db, make_user,
                                                                  upstream, procs):
    name = f"slots-{uuid.uuid4().hex[:8]}"
    slow, quick = definitions(upstream.url, name)
    b, a = make_user(), make_user()
    project_b, project_a = await b.project("tenant-b"), await a.project("tenant-a")
    wf_b = (await b.workflow(project_b, slow))["id"]
    wf_a = (await a.workflow(project_a, quick))["id"]
    # 4 slots, a cap of 16: the cap alone would let B take all four.
    procs.append(start_worker({**faults_env, **EGRESS, "MESHHOOK_WORKER_CONCURRENCY": "4"}, faults_logs, "slots"))
    b_runs = [await b.start(wf_b) for _ in range(10)]

    async def b_running():
        n = await leased_running(faults_db, project_b)
        return n if n >= 3 else None

    try:
        held = await wait_for(b_running, 30, 0.1, "tenant B to start")
        await asyncio.sleep(1.0)  # B's other runs are queued and claimable all along
        assert await leased_running(faults_db, project_b) == held == 3
        rid = await a.start(wf_a, {"n": 1})
        run = await a.wait(rid, timeout=20)
        assert run["status"] == "succeeded", run
        assert await leased_running(faults_db, project_b) == 3
    finally:
        await cancel_all(b, b_runs)


async def test_one_run_with_many_parallel_calls_leaves_slots_for_another_project(faults_env, faults_logs, faults_db,
                                                                                 make_user, upstream, procs):
    name = f"fan-{uuid.uuid4().hex[:8]}"
    b, a = make_user(), make_user()
    project_b, project_a = await b.project("tenant-b"), await a.project("tenant-a")
    fan = {"nodes": [{"id": "start", "data": {"type": "webhook"}}]
           + [{"id": f"c{i}", "data": {"type": "http_call", "config": {
               "url": f"{upstream.url}/trickle/{name}?bytes=60&every=1", "timeout_s": 90}}} for i in range(6)],
           "edges": [{"source": "start", "target": f"c{i}"} for i in range(6)]}
    call = {"nodes": [{"id": "start", "data": {"type": "webhook"}},
                      {"id": "call", "data": {"type": "http_call", "config": {"url": f"{upstream.url}/ok/{name}-a"}}}],
            "edges": [{"source": "start", "target": "call"}]}
    wf_b = (await b.workflow(project_b, fan))["id"]
    wf_a = (await a.workflow(project_a, call))["id"]
    procs.append(start_worker({**faults_env, **EGRESS, "MESHHOOK_WORKER_CONCURRENCY": "4"}, faults_logs, "fan"))
    b_run = await b.start(wf_b)

    async def calls_in_flight():
        n = await faults_db.fetchval("select count(*) from step_runs where run_id = $1 and status = 'running'",
                                     uuid.UUID(b_run))
        return n if n >= 3 else None

    try:
        assert await wait_for(calls_in_flight, 30, 0.1, "tenant B's calls to start") == 3  # its share of 4
        rid = await a.start(wf_a)
        run = await a.wait(rid, timeout=20)
        assert run["status"] == "succeeded", run
        assert len(upstream.seen(f"{name}-a")) == 1
        assert (await b.run(b_run))["status"] == "running"
    finally:
        await cancel_all(b, [b_run])
