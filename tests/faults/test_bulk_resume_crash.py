"""A bulk resume survives SIGKILLed workers: the worker driving the job is killed three times in the
middle of it; each time a fresh worker takes the job over when the lease expires and carries on
where it stopped. Every run is resumed exactly once: one child per run, one accepted audit row
per run that is not a replay, and every child succeeds. Also: a worker without notifications
finds new jobs by polling, and a job rides out a database restart."""
from __future__ import annotations

import asyncio
import random
import uuid

from tests import support
from tests.conftest import linear
from tests.faults.conftest import record, start_worker, wait_final

RUNS = 90
KILLS = 3
RATE = 25
LEASE_S = "1.5"


async def test_a_bulk_resume_finishes_after_its_worker_is_killed_with_no_run_resumed_twice(
        faults_env, faults_logs, faults_db, make_user, world, procs):
    rng = random.Random(14)
    tag = f"bulk-crash-{uuid.uuid4().hex[:8]}"
    env = {**faults_env, "MESHHOOK_LEASE_S": LEASE_S}
    worker = start_worker(env, faults_logs, "victim")
    procs.append(worker)

    owner = make_user()
    project = await owner.project("bulk crash")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("charge", "http_call", {"method": "POST", "url": f"{world.url}/gate/{tag}", "retry": {"max_attempts": 1}}),
        ("done", "transform", {"expression": "steps.charge.status"})))
    runs = [await owner.start(wf["id"], {"n": i}) for i in range(RUNS)]
    statuses = await wait_final(faults_db, runs, 120, "runs before the outage ends")
    assert set(statuses.values()) == {"failed"}
    world.open(tag)

    r = await owner.post(f"/projects/{project}/bulk-resumes",
                         {"filter": {"workflow_id": wf["id"]}, "reason": "outage over", "max_per_second": RATE})
    assert r.status_code == 202, r.text
    bulk_id = r.json()["id"]

    async def job():
        return (await owner.get(f"/bulk-resumes/{bulk_id}")).json()

    kills = []
    for k in range(KILLS):
        target = (k + 1) * RUNS // (KILLS + 1) + rng.randint(-5, 5)

        async def progressed(target=target):
            j = await job()
            return j if j["accepted"] >= target else None

        await support.wait_for(progressed, 60, 0.02, f"{target} runs resumed")
        worker.kill()  # SIGKILL: no goodbye; the job's lease stays until it expires
        kills.append((await job())["accepted"])
        worker = start_worker(env, faults_logs, f"rescuer{k}")
        procs.append(worker)

    async def finished():
        j = await job()
        return j if j["finished_at"] else None

    final = await support.wait_for(finished, 120, 0.1, "the bulk resume to finish")
    assert (final["status"], final["accepted"], final["skipped"], final["rejected"], final["pending"]) == (
        "succeeded", RUNS, 0, 0, 0), {k: final[k] for k in ("status", "accepted", "skipped", "rejected")}
    assert all(k < RUNS for k in kills), kills  # every kill hit the job mid-way

    parents = [uuid.UUID(x) for x in runs]
    children = await faults_db.fetch("select parent_run_id, id::text from runs where parent_run_id = any($1::uuid[])",
                                     parents)
    per_parent: dict[uuid.UUID, list[str]] = {}
    for c in children:
        per_parent.setdefault(c["parent_run_id"], []).append(c["id"])
    assert len(per_parent) == RUNS and all(len(v) == 1 for v in per_parent.values()), \
        {str(k): v for k, v in per_parent.items() if len(v) > 1}
    assert {i["new_run_id"] for i in final["items"]} == {v[0] for v in per_parent.values()}

    audit = await faults_db.fetch(
        "select run_id, outcome, coalesce((detail->>'idempotent_replay')::boolean, false) as replay from audit_log"
        " where action = 'run.resume' and run_id = any($1::uuid[])", parents)
    fresh = [a["run_id"] for a in audit if a["outcome"] == "accepted" and not a["replay"]]
    replays = sum(1 for a in audit if a["replay"])
    assert sorted(fresh) == sorted(parents)  # one real resume per run; a replay only repeats its answer

    child_status = await wait_final(faults_db, [v[0] for v in per_parent.values()], 120, "resumed runs")
    assert set(child_status.values()) == {"succeeded"}
    record("bulk_resume_crash", runs=RUNS, kills=KILLS, accepted_at_each_kill=kills, replayed_after_crash=replays,
           resumed_twice=0)


async def test_a_worker_that_gets_no_notifications_still_picks_up_a_new_bulk_resume(
        faults_env, faults_logs, faults_db, make_user, world, procs):
    tag = f"bulk-poll-{uuid.uuid4().hex[:8]}"
    procs.append(start_worker(faults_env, faults_logs, "poller", MESHHOOK_NOTIFY_ENABLED="false"))
    owner = make_user()
    project = await owner.project("bulk polling")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("charge", "http_call", {"url": f"{world.url}/gate/{tag}", "retry": {"max_attempts": 1}})))
    runs = [await owner.start(wf["id"]) for _ in range(3)]
    assert set((await wait_final(faults_db, runs, 60, "runs")).values()) == {"failed"}
    world.open(tag)
    job = (await owner.post(f"/projects/{project}/bulk-resumes",
                            {"filter": {"workflow_id": wf["id"]}, "reason": "polling", "max_per_second": 100})).json()

    async def finished():
        j = (await owner.get(f"/bulk-resumes/{job['id']}")).json()
        return j if j["finished_at"] else None

    final = await support.wait_for(finished, 30, 0.1, "the bulk resume to finish by polling")
    assert (final["status"], final["accepted"]) == ("succeeded", 3)


async def test_a_bulk_resume_rides_out_a_database_restart(private_pg, faults_env, faults_logs, faults_db, make_user,
                                                          world, procs):
    """PostgreSQL restarts in the middle of a job: the worker's resumes and writes fail for a moment;
    afterwards the job carries on and every run is resumed exactly once."""
    tag = f"bulk-restart-{uuid.uuid4().hex[:8]}"
    procs.append(start_worker(faults_env, faults_logs, "restart"))
    owner = make_user()
    project = await owner.project("bulk restart")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("charge", "http_call", {"url": f"{world.url}/gate/{tag}", "retry": {"max_attempts": 1}})))
    runs = [await owner.start(wf["id"]) for _ in range(40)]
    assert set((await wait_final(faults_db, runs, 60, "runs")).values()) == {"failed"}
    world.open(tag)
    job = (await owner.post(f"/projects/{project}/bulk-resumes",
                            {"filter": {"workflow_id": wf["id"]}, "reason": "restart", "max_per_second": 20})).json()

    async def some():
        j = (await owner.get(f"/bulk-resumes/{job['id']}")).json()
        return j if j["accepted"] >= 10 else None

    await support.wait_for(some, 60, 0.05, "ten runs resumed")
    await asyncio.to_thread(private_pg.stop, "fast")
    await asyncio.sleep(1)
    await asyncio.to_thread(private_pg.start)

    async def finished():
        r = await owner.get(f"/bulk-resumes/{job['id']}")
        return r.json() if r.status_code == 200 and r.json()["finished_at"] else None

    final = await support.wait_for(finished, 90, 0.2, "the bulk resume to finish after the restart")
    assert (final["status"], final["accepted"], final["skipped"], final["rejected"]) == ("succeeded", 40, 0, 0), final
    per_parent = await faults_db.fetch("select parent_run_id, count(*) as n from runs"
                                       " where parent_run_id = any($1::uuid[]) group by 1", [uuid.UUID(r) for r in runs])
    assert len(per_parent) == 40 and {p["n"] for p in per_parent} == {1}
