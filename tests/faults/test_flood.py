"""Flood: 200 concurrent clients for 25 s against one `meshhook serve` process (API and
in-process worker), mixing reads, run starts and resumes, bounded in count and time, on
loopback only. No 5xx, no dropped connections, every started run completes, and the
process's memory stays flat. p99 latencies and RSS are reported."""
from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter, defaultdict

import httpx

from tests.conftest import Client, linear
from tests.faults.conftest import percentile, record, start_service, wait_final

CLIENTS = 200
WARMUP_S = 3.0
DURATION_S = 25.0
MAX_REQUESTS = 40_000
RSS_GROWTH_LIMIT_MB = 150
OPS = {"read": 45, "list": 10, "events": 10, "start": 20, "resume": 15}
EXPECTED = {"read": {200}, "list": {200}, "events": {200}, "start": {202}, "resume": {202, 409}}


async def test_flood_of_clients_gets_no_5xx_and_memory_stays_flat(faults_env, faults_logs, faults_db, keys,
                                                                  world, procs):
    svc = await asyncio.to_thread(start_service, faults_env, faults_logs / "flood-api.log", worker=True)
    procs.append(svc.proc)
    owner, editor = Client(svc.url, keys), Client(svc.url, keys)
    try:
        project = await owner.project("flood")
        await owner.add_member(project, editor, "editor")
        fast = await owner.workflow(project, linear(
            ("start", "webhook", {}), ("t", "transform", {"expression": "{n: input.n}"}),
            ("u", "transform", {"expression": "steps.t.n"})))
        failing = await owner.workflow(project, linear(
            ("start", "webhook", {}),
            ("call", "http_call", {"url": f"{world.url}/status/400/flood-{uuid.uuid4().hex[:6]}",
                                   "retry": {"max_attempts": 1}})))
        readable = [await owner.start(fast["id"], {"n": i}) for i in range(20)]
        failed = [await owner.start(failing["id"], {"n": i}) for i in range(20)]
        await wait_final(faults_db, readable + failed, 60, "seed runs")
    finally:
        await owner.aclose()
        await editor.aclose()

    rss_idle = svc.rss_kb()
    # One connection per client: a single httpx pool shared by 200 requests spends the client's CPU
    # on its own bookkeeping and would measure itself rather than the service.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    https = [httpx.AsyncClient(base_url=svc.url, timeout=30, limits=limits,
                               headers={"Authorization": f"Bearer {(owner, editor)[i % 2].token}"})
             for i in range(CLIENTS)]
    latencies: dict[str, list[float]] = defaultdict(list)
    codes: dict[str, Counter] = defaultdict(Counter)
    errors: list[str] = []
    started: list[str] = []
    sent = 0
    rss_samples: list[int] = []

    async def do(http: httpx.AsyncClient, op: str, rng: random.Random) -> httpx.Response:
        if op == "read":
            return await http.get(f"/runs/{rng.choice(readable)}")
        if op == "list":
            return await http.get("/runs", params={"project_id": project, "limit": 20})
        if op == "events":
            return await http.get(f"/runs/{rng.choice(readable)}/events")
        if op == "start":
            return await http.post(f"/workflows/{fast['id']}/runs", json={"input": {"n": rng.randrange(1000)}})
        return await http.post(f"/runs/{rng.choice(failed)}/resume", json={"from_step": "call", "reason": "flood"})

    async def phase(seconds: float, keep: bool) -> float:
        nonlocal sent
        end = time.monotonic() + seconds

        async def client(i: int) -> None:
            nonlocal sent
            rng = random.Random(i * 7919 + int(keep))
            http = https[i]
            while time.monotonic() < end and sent < MAX_REQUESTS:
                sent += 1
                op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
                t0 = time.perf_counter()
                try:
                    r = await do(http, op, rng)
                except httpx.HTTPError as exc:
                    errors.append(f"{op}: {type(exc).__name__}: {exc}")
                    continue
                if not keep:
                    continue
                latencies[op].append((time.perf_counter() - t0) * 1000)
                codes[op][r.status_code] += 1
                if op == "start" and r.status_code == 202:
                    started.append(r.json()["id"])

        async def sample_rss() -> None:
            while time.monotonic() < end:
                rss_samples.append(svc.rss_kb())
                await asyncio.sleep(1)

        t0 = time.monotonic()
        await asyncio.gather(sample_rss(), *(client(i) for i in range(CLIENTS)))
        return time.monotonic() - t0

    try:
        await phase(WARMUP_S, keep=False)  # pools, caches and connections warm up first
        rss_before = svc.rss_kb()
        sent = 0
        cpu0, own0 = svc.cpu_s(), os.times()
        elapsed = await phase(DURATION_S, keep=True)
        cpu1, own1 = svc.cpu_s(), os.times()
        rss_after_flood = svc.rss_kb()
    finally:
        for h in https:
            await h.aclose()
    statuses = await wait_final(faults_db, started, 120, "runs started by the flood")
    rss_after = svc.rss_kb()
    assert svc.proc.p.poll() is None

    total = sum(len(v) for v in latencies.values())
    all_lat = [x for v in latencies.values() for x in v]
    server_errors = {op: {c: n for c, n in cs.items() if c >= 500} for op, cs in codes.items()}
    unexpected = {op: {c: n for c, n in cs.items() if c not in EXPECTED[op]} for op, cs in codes.items()}
    figures = dict(
        clients=CLIENTS, duration_s=round(elapsed, 1), requests=total, rps=round(total / elapsed),
        status_codes={op: dict(cs) for op, cs in codes.items()}, transport_errors=len(errors),
        p50_ms=round(percentile(all_lat, 50), 1), p99_ms=round(percentile(all_lat, 99), 1),
        p99_ms_by_op={op: round(percentile(v, 99), 1) for op, v in latencies.items()},
        service_cpu_share=round((cpu1 - cpu0) / elapsed, 2),
        client_cpu_share=round((own1.user - own0.user + own1.system - own0.system) / elapsed, 2),
        runs_started=len(started), runs_completed=sum(s == "succeeded" for s in statuses.values()),
        rss_mb_idle=round(rss_idle / 1024, 1), rss_mb_before=round(rss_before / 1024, 1),
        rss_mb_after_flood=round(rss_after_flood / 1024, 1), rss_mb_after_drain=round(rss_after / 1024, 1),
        rss_mb_peak=round(max(rss_samples + [rss_after]) / 1024, 1),
        rss_growth_mb=round((rss_after - rss_before) / 1024, 1))
    record("flood", **figures)

    assert not errors, errors[:10]
    assert not any(server_errors.values()), server_errors
    assert not any(unexpected.values()), unexpected
    assert total > 0 and all(s == "succeeded" for s in statuses.values())
    assert (rss_after - rss_before) / 1024 < RSS_GROWTH_LIMIT_MB, figures
