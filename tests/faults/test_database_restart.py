"""Database restart in the middle of traffic: while PostgreSQL is down the API answers 503
problem+json at once (no hangs, no 500s); once it is back the API and the worker recover by
themselves, the worker's listener LISTENs again, and every queued and resumed run completes."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from tests.conftest import linear, sign_hook
from tests.faults.conftest import is_problem, percentile, record, start_worker, wait_final
from tests.support import wait_for

CLIENTS = 6
OUTAGE_S = 3.0


@dataclass
class Sample:
    t0: float
    t1: float
    op: str
    status: int | str
    problem: bool = False
    retry_after: str | None = None

    @property
    def ms(self) -> float:
        return (self.t1 - self.t0) * 1000


async def test_api_and_worker_ride_out_a_database_restart(private_pg, faults_api, faults_env, faults_logs,
                                                          faults_db, make_user, world, procs):
    owner = make_user()
    project = await owner.project("db-restart")
    tag, gate = f"restart-{uuid.uuid4().hex[:8]}", f"gate-{uuid.uuid4().hex[:8]}"
    flow = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("t", "transform", {"expression": "{n: input.n}"}),
        ("call", "http_call", {"method": "POST", "url": f"{world.url}/ok/{tag}", "body": {"n": "{{ input.n }}"}}),
        ("fin", "transform", {"expression": "steps.call.status"})))
    flaky = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/gate/{gate}", "retry": {"max_attempts": 1}}),
        ("fin", "transform", {"expression": "steps.call.status"})))
    worker = start_worker(faults_env, faults_logs, "survivor")
    procs.append(worker)
    failed = [await owner.start(flaky["id"]) for _ in range(4)]
    assert set((await wait_final(faults_db, failed, 60)).values()) == {"failed"}
    world.open(gate)  # the upstream is fixed: resumed runs will succeed

    async def listeners() -> int:
        return await faults_db.fetchval(
            "select count(*) from pg_stat_activity where application_name = 'meshhook-listener'")

    await wait_for(listeners, 15, 0.1, "the worker's listener")
    api_pid, worker_pid = faults_api.pid, worker.p.pid

    samples: list[Sample] = []
    started: list[str] = []
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {owner.token}"}
    async with httpx.AsyncClient(base_url=faults_api.url, headers=headers, timeout=10) as http:
        async def traffic(i: int) -> None:
            k = 0
            while not stop.is_set():
                k += 1
                op = "start" if (k + i) % 2 else "read"
                t0 = time.time()
                try:
                    if op == "start":
                        r = await http.post(f"/workflows/{flow['id']}/runs", json={"input": {"n": k}})
                    else:
                        r = await http.get(f"/runs/{failed[k % len(failed)]}")
                except httpx.HTTPError as exc:  # a hang (timeout) or a dropped connection
                    samples.append(Sample(t0, time.time(), op, f"error:{type(exc).__name__}"))
                    continue
                samples.append(Sample(t0, time.time(), op, r.status_code, is_problem(r), r.headers.get("retry-after")))
                if r.status_code == 202:
                    started.append(r.json()["id"])
                await asyncio.sleep(0.02)  # pacing, so a few clients make steady traffic

        watch: list[tuple[float, int | None]] = []

        async def watch_listener() -> None:
            while not stop.is_set():
                try:
                    watch.append((time.time(), await asyncio.wait_for(listeners(), 2)))
                except Exception:  # noqa: BLE001 - the database is down
                    watch.append((time.time(), None))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(traffic(i)) for i in range(CLIENTS)]
        tasks.append(asyncio.create_task(watch_listener()))
        await asyncio.sleep(1.5)  # traffic before the outage
        children = []
        for run_id in failed[:2]:  # resumed just before the outage: queued or running when it hits
            r = await owner.resume(run_id, "call", reason="before the restart")
            assert r.status_code == 202, r.text
            children.append(r.json()["id"])
        t_stopping = time.time()
        await asyncio.to_thread(private_pg.stop, "fast")
        t_down = time.time()
        # Every kind of request is refused the same way: resume, webhook, list, readiness.
        hook_body = b'{"n": 0}'
        probes = {
            "resume": await http.post(f"/runs/{failed[3]}/resume", json={"from_step": "call"}),
            "hook": await http.post(f"/hooks/{flow['id']}", content=hook_body,
                                    headers=sign_hook(flow["webhook_secret"], hook_body)),
            "list": await http.get("/runs", params={"project_id": project}),
            "readyz": await http.get("/readyz"),
        }
        await asyncio.sleep(OUTAGE_S)
        t_starting = time.time()
        await asyncio.to_thread(private_pg.start)
        t_up = time.time()

        async def api_back():
            return any(s.t0 >= t_up and s.status in (200, 202) for s in samples)

        async def relistened():
            return any(t > t_up and n for t, n in watch)

        await wait_for(api_back, 30, 0.05, "the API to answer 2xx again")
        await wait_for(relistened, 30, 0.05, "the worker's listener to LISTEN again")
        await asyncio.sleep(2.0)  # traffic after the recovery
        stop.set()
        await asyncio.gather(*tasks)

    relisten_at = min(t for t, n in watch if t > t_up and n)
    assert any(n == 0 or n is None for t, n in watch if t_down <= t <= t_up)
    for run_id in failed[2:]:
        r = await owner.resume(run_id, "call", reason="database is back")
        assert r.status_code == 202, r.text
        children.append(r.json()["id"])
    statuses = await wait_final(faults_db, started + children, 90, "runs started around the restart")

    # ---- during the outage: fast 503 problem+json with Retry-After; never a 500 or a hang
    outage = [s for s in samples if s.t0 >= t_down and s.t1 <= t_starting]
    assert outage, "no request fell inside the outage"
    assert all(s.status == 503 and s.problem and s.retry_after for s in outage), \
        [s for s in outage if not (s.status == 503 and s.problem and s.retry_after)][:5]
    assert all(r.status_code == 503 and is_problem(r) for r in probes.values()), \
        {k: (r.status_code, r.text[:200]) for k, r in probes.items()}
    bad = [s for s in samples if s.status not in (200, 202, 503)]
    assert not bad, bad[:10]
    outage_ms = [s.ms for s in outage]
    assert max(outage_ms) < 2000, f"a request took {max(outage_ms):.0f} ms to be refused"

    # ---- recovery: API, worker and listener, without restarting either process
    after = [s for s in samples if s.t0 >= t_up]
    first_ok = min(s.t1 for s in after if s.status in (200, 202))
    api_recovery_s = first_ok - t_up
    settled = [s for s in after if s.t0 >= first_ok + 0.5]
    assert settled and all(s.status in (200, 202) for s in settled), [s for s in settled if s.status not in (200, 202)][:5]
    assert faults_api.proc.p.poll() is None and faults_api.pid == api_pid
    assert worker.p.poll() is None and worker.p.pid == worker_pid
    assert all(statuses[r] == "succeeded" for r in started + children), statuses
    first_finish = await faults_db.fetchval(
        "select extract(epoch from min(finished_at)) from runs where project_id = $1 and finished_at > to_timestamp($2)",
        uuid.UUID(project), t_up)
    worker_recovery_s = float(first_finish) - t_up

    # ---- nothing half-written: every run in the project is final with all its steps
    rows = await faults_db.fetch(
        "select r.id::text, r.status, r.workflow_id::text, count(s.*) as steps from runs r"
        " left join step_runs s on s.run_id = r.id where r.project_id = $1 group by 1, 2, 3", uuid.UUID(project))
    assert all(r["status"] in ("succeeded", "failed") and r["steps"] == 4 - (r["workflow_id"] == flaky["id"])
               for r in rows), [dict(r) for r in rows if r["status"] not in ("succeeded", "failed")][:5]
    extra = len([r for r in rows if r["workflow_id"] == flow["id"]]) - len(started)

    counts: dict[str, int] = {}
    for s in samples:
        counts[str(s.status)] = counts.get(str(s.status), 0) + 1
    record("database_restart", outage_s=round(t_starting - t_down, 2), stop_took_s=round(t_down - t_stopping, 2),
           start_took_s=round(t_up - t_starting, 2), requests=len(samples), status_codes=counts,
           outage_requests=len(outage), outage_503_p50_ms=round(percentile(outage_ms, 50), 1),
           outage_503_max_ms=round(max(outage_ms), 1),
           api_recovery_s=round(api_recovery_s, 3), worker_first_run_finished_s=round(worker_recovery_s, 3),
           listener_relisten_s=round(relisten_at - t_up, 3),
           runs_started=len(started), resumed=len(children), runs_completed=len(statuses),
           runs_lost=0, runs_committed_without_202=extra)


async def test_a_restart_while_idle_costs_the_next_requests_nothing(private_pg, faults_api, faults_env, faults_logs,
                                                                     faults_db, make_user, procs):
    """Pooled connections that died with the old server are noticed and replaced at checkout:
    the first requests after a quiet restart succeed, they are not spent discovering dead connections."""
    owner = make_user()
    project = await owner.project("idle-restart")
    flow = await owner.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "input"})))
    procs.append(start_worker(faults_env, faults_logs, "idle-restart"))
    headers = {"Authorization": f"Bearer {owner.token}"}
    async with httpx.AsyncClient(base_url=faults_api.url, headers=headers, timeout=10) as http:
        # Fill the API's pool with open connections first.
        warm = await asyncio.gather(*(http.get("/runs", params={"project_id": project}) for _ in range(40)))
        assert {r.status_code for r in warm} == {200}
        await asyncio.to_thread(private_pg.stop, "fast")
        await asyncio.to_thread(private_pg.start)
        t_up = time.time()
        after = await asyncio.gather(*(http.get("/runs", params={"project_id": project}) for _ in range(40)))
        first_batch_s = time.time() - t_up
    codes = Counter(r.status_code for r in after)
    run_id = await owner.start(flow["id"], {"n": 1})
    assert (await wait_final(faults_db, [run_id], 30))[run_id] == "succeeded"
    record("database_restart_idle", requests_after_restart=len(after), status_codes=dict(codes),
           first_batch_s=round(first_batch_s, 3))
    assert codes == {200: 40}, codes
