"""Worker crashes: 50 runs of mixed workflows (http_call, transforms, branches, delays) while one
worker process is SIGKILLed and restarted again and again next to a second worker that stays
alive. Every run finishes as its definition says, no step is recorded as succeeded twice, and
the outside world sees each request with its Idempotency-Key, repeated only after a crash."""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict

from tests.faults.conftest import record, start_worker, wait_final

RUNS = 50
KILLS = 12
LEASE_S = "1.5"


def node(key: str, type_: str, config: dict | None = None) -> dict:
    return {"id": key, "data": {"type": type_, "config": config or {}}}


def edge(a: str, b: str, handle: str | None = None) -> dict:
    return {"source": a, "target": b, **({"sourceHandle": handle} if handle else {})}


def definitions(world: str, tag: str) -> dict[str, dict]:
    http_branch = {
        "nodes": [
            node("start", "webhook"),
            node("prep", "transform", {"expression": "{n: input.n}"}),
            node("call", "http_call", {"method": "POST", "url": f"{world}/ok/{tag}", "body": {"n": "{{ input.n }}"}}),
            node("check", "branch", {"condition": "steps.call.status == `200`"}),
            node("ok", "transform", {"expression": "steps.call.body.body.n"}),
            node("bad", "terminate", {"status": "failed", "message": "the call did not answer 200"}),
            node("wait", "delay", {"seconds": 0.3}),
            node("after", "http_call", {"url": f"{world}/slow/{tag}?s=0.2"}),
            node("done", "transform", {"expression": "[steps.ok, steps.after.status]"}),
        ],
        "edges": [edge("start", "prep"), edge("prep", "call"), edge("call", "check"),
                  edge("check", "ok", "true"), edge("check", "bad", "false"),
                  edge("ok", "wait"), edge("wait", "after"), edge("after", "done")],
    }
    parallel = {
        "nodes": [
            node("start", "webhook"),
            node("a", "http_call", {"url": f"{world}/slow/{tag}?s=0.3"}),
            node("b", "http_call", {"method": "POST", "url": f"{world}/ok/{tag}", "body": {"run": "{{ run.id }}"}}),
            node("join", "transform", {"expression": "[steps.a.status, steps.b.status]"}),
            node("big", "branch", {"condition": "input.n > `25`"}),
            node("hi", "transform", {"expression": "'hi'"}),
            node("lo", "transform", {"expression": "'lo'"}),
            node("fin", "transform", {"expression": "input.n"}),
        ],
        "edges": [edge("start", "a"), edge("start", "b"), edge("a", "join"), edge("b", "join"),
                  edge("join", "big"), edge("big", "hi", "true"), edge("big", "lo", "false"),
                  edge("hi", "fin"), edge("lo", "fin")],
    }
    durable_delay = {
        "nodes": [
            node("start", "webhook"),
            node("nap", "delay", {"seconds": 2.5}),  # longer than the in-worker wait: the run sleeps in the DB
            node("call", "http_call", {"method": "POST", "url": f"{world}/ok/{tag}"}),
            node("fin", "transform", {"expression": "steps.call.status"}),
        ],
        "edges": [edge("start", "nap"), edge("nap", "call"), edge("call", "fin")],
    }
    return {"http_branch": http_branch, "parallel": parallel, "durable_delay": durable_delay}


HTTP_STEPS = {"http_branch": ["call", "after"], "parallel": ["a", "b"], "durable_delay": ["call"]}


def expected_steps(kind: str, n: int) -> dict[str, str]:
    if kind == "http_branch":
        return {k: ("skipped" if k == "bad" else "succeeded")
                for k in ("start", "prep", "call", "check", "ok", "bad", "wait", "after", "done")}
    if kind == "parallel":
        out = {k: "succeeded" for k in ("start", "a", "b", "join", "big", "hi", "lo", "fin")}
        out["lo" if n > 25 else "hi"] = "skipped"
        return out
    return {k: "succeeded" for k in ("start", "nap", "call", "fin")}


async def test_runs_survive_sigkilled_workers(faults_env, faults_logs, faults_db, make_user, world, procs):
    rng = random.Random(8)
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("crashes")
    kinds = list(definitions(world.url, tag).items())
    wf_ids = {}
    for kind, definition in kinds:
        wf_ids[kind] = (await owner.workflow(project, definition))["id"]

    env = {**faults_env, "MESHHOOK_LEASE_S": LEASE_S}
    # The survivor takes few runs at a time, so the victim holds most of them when it dies.
    steady = start_worker(env, faults_logs, "steady", MESHHOOK_WORKER_CONCURRENCY="2")
    procs.append(steady)
    victim = start_worker(env, faults_logs, "victim")
    procs.append(victim)

    runs: dict[str, tuple[str, int]] = {}  # run id -> (kind, n)
    kills: list[dict] = []

    async def victim_holds() -> int:
        return await faults_db.fetchval(
            "select count(*) from runs where lease_owner like '%:victim:%' and status = 'running'"
            " and lease_expires_at > clock_timestamp()")

    started_at = time.monotonic()
    for cycle in range(KILLS):
        batch = -(-(RUNS - len(runs)) // (KILLS - cycle))
        for _ in range(batch):
            n = len(runs)
            kind = kinds[n % len(kinds)][0]
            runs[await owner.start(wf_ids[kind], {"n": n})] = (kind, n)
        deadline = time.monotonic() + 8
        held = 0
        while time.monotonic() < deadline:
            held = await victim_holds()
            if held:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0, 0.4))
        held = await victim_holds()
        victim.kill()  # SIGKILL: no goodbye, leases stay until they expire
        kills.append({"at": time.time(), "held": held})
        victim = start_worker(env, faults_logs, "victim")
        procs.append(victim)

    statuses = await wait_final(faults_db, list(runs), 120, "crash-test runs")
    drained_s = time.monotonic() - started_at
    assert steady.p.poll() is None, "the surviving worker died"

    # ---- every run final, as its definition says; each step exactly as expected
    ids = [uuid.UUID(r) for r in runs]
    step_rows = await faults_db.fetch(
        "select run_id::text, step_key, status from step_runs where run_id = any($1::uuid[])", ids)
    steps: dict[str, dict[str, str]] = defaultdict(dict)
    for r in step_rows:
        steps[r["run_id"]][r["step_key"]] = r["status"]
    lost = [r for r, (kind, n) in runs.items()
            if statuses.get(r) != "succeeded" or steps[r] != expected_steps(kind, n)]

    # ---- no step recorded as succeeded twice
    succeeded_events = await faults_db.fetch(
        "select run_id::text, step_key, count(*) as n from run_events"
        " where type = 'step_succeeded' and run_id = any($1::uuid[]) group by 1, 2", ids)
    per_step = {(r["run_id"], r["step_key"]): r["n"] for r in succeeded_events}
    duplicated = {k: v for k, v in per_step.items() if v > 1}
    missing_events = [(r, k) for r, (kind, n) in runs.items() for k, st in expected_steps(kind, n).items()
                      if st == "succeeded" and per_step.get((r, k)) != 1]
    taken_over = await faults_db.fetchval(
        "select count(distinct run_id) from run_events where type = 'run_taken_over' and run_id = any($1::uuid[])", ids)
    re_executed = await faults_db.fetchval(
        "select count(*) from run_events where type = 'step_retrying' and payload->>'reason' = 'worker lost'"
        " and run_id = any($1::uuid[])", ids)

    # ---- the outside world: every http step's request carried its Idempotency-Key; repeats only after a kill
    with world.lock:
        seen = [r for r in world.requests if r["name"] == tag]
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in seen:
        by_key[r["idempotency_key"]].append(r)
    wanted = {f"{r}:{k}" for r, (kind, _n) in runs.items() for k in HTTP_STEPS[kind]}
    unknown_keys = set(by_key) - wanted
    never_sent = wanted - set(by_key)
    kill_times = sorted(k["at"] for k in kills)
    unexplained = []
    repeats = 0
    for key, reqs in by_key.items():
        reqs.sort(key=lambda r: r["started"])
        for prev, nxt in zip(reqs, reqs[1:]):
            repeats += 1
            if not any(prev["started"] < t < nxt["started"] for t in kill_times):
                unexplained.append(key)

    record("worker_crashes", runs=RUNS, completed=RUNS - len(lost), lost=len(lost),
           duplicated_steps=len(duplicated), kills=len(kills), runs_held_by_victim_at_kill=sum(k["held"] for k in kills),
           runs_taken_over=taken_over, steps_re_executed_after_crash=re_executed,
           http_requests=len(seen), http_repeats_after_crash=repeats, drained_s=round(drained_s, 1))

    assert len(kills) >= 10
    assert not lost, [(r, statuses.get(r), dict(steps[r])) for r in lost[:5]]
    assert not duplicated, duplicated
    assert not missing_events, missing_events[:10]
    assert not unknown_keys and not never_sent, (sorted(unknown_keys)[:5], sorted(never_sent)[:5])
    assert not unexplained, f"requests repeated without a crash in between: {unexplained[:5]}"
    # The proof is only worth something if the kills hit work in progress.
    assert sum(k["held"] for k in kills) > 0 and taken_over > 0
    leftover = await faults_db.fetchval(
        "select count(*) from runs where id = any($1::uuid[]) and (lease_owner is not null or wake_at is not null)", ids)
    assert leftover == 0
