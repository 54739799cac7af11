"""Resume races: 50 failed runs, each hit by 10 concurrent resume requests from two editors
(500 requests at once). Exactly one child per run; the other nine are 409 naming it; every
attempt is audited exactly once."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict

import httpx

from tests.conftest import linear
from tests.faults.conftest import percentile, record, start_worker, wait_final

RUNS = 50
PER_RUN = 10


async def test_concurrent_resumes_make_exactly_one_child(faults_api, faults_env, faults_logs, faults_db,
                                                         make_user, world, procs):
    owner, alice, bob = make_user(), make_user(), make_user()
    project = await owner.project("races")
    await owner.add_member(project, alice, "editor")
    await owner.add_member(project, bob, "editor")
    gate = f"race-{uuid.uuid4().hex[:8]}"
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("prep", "transform", {"expression": "input"}),
        ("call", "http_call", {"url": f"{world.url}/gate/{gate}", "retry": {"max_attempts": 1}}),
        ("fin", "transform", {"expression": "steps.call.status"})))

    worker = start_worker(faults_env, faults_logs, "races")
    procs.append(worker)
    parents = [await owner.start(wf["id"], {"i": i}) for i in range(RUNS)]
    assert set((await wait_final(faults_db, parents, 60, "runs to fail")).values()) == {"failed"}
    # No worker while racing: a child stays queued, so a second child could only come from a lost race.
    assert worker.terminate() == 0

    editors = {alice.user_id: alice, bob.user_id: bob}
    limits = httpx.Limits(max_connections=RUNS * PER_RUN, max_keepalive_connections=RUNS * PER_RUN)
    clients = {uid: httpx.AsyncClient(base_url=faults_api.url, timeout=60, limits=limits,
                                      headers={"Authorization": f"Bearer {c.token}"}) for uid, c in editors.items()}
    order = list(editors)
    try:
        async def attempt(run_id: str, i: int):
            actor = order[i % 2]
            t0 = time.perf_counter()
            r = await clients[actor].post(f"/runs/{run_id}/resume", json={"from_step": "call", "reason": f"race {i}"})
            return run_id, actor, r, time.perf_counter() - t0

        t0 = time.perf_counter()
        results = await asyncio.gather(*(attempt(p, i) for i in range(PER_RUN) for p in parents))
        elapsed = time.perf_counter() - t0
    finally:
        for c in clients.values():
            await c.aclose()

    codes = Counter(r.status_code for _p, _a, r, _s in results)
    assert set(codes) <= {202, 409}, {c: n for c, n in codes.items()}
    accepted: dict[str, list[str]] = defaultdict(list)
    for parent, _actor, r, _s in results:
        if r.status_code == 202:
            accepted[parent].append(r.json()["id"])
    assert all(len(accepted[p]) == 1 for p in parents), {p: accepted[p] for p in parents if len(accepted[p]) != 1}
    for parent, _actor, r, _s in results:
        if r.status_code == 409:
            assert r.json().get("active_run_id") == accepted[parent][0], r.text

    # ---- the database agrees: one child per parent
    rows = await faults_db.fetch(
        "select parent_run_id::text as parent, id::text, status, trigger from runs where parent_run_id = any($1::uuid[])",
        parents)
    per_parent = Counter(r["parent"] for r in rows)
    assert per_parent == Counter({p: 1 for p in parents}), per_parent
    assert all(r["id"] == accepted[r["parent"]][0] and r["status"] == "queued" and r["trigger"] == "resume"
               for r in rows)

    # ---- every attempt audited exactly once, with its actor, outcome and request id
    audit = await faults_db.fetch(
        "select run_id::text, actor_id::text, outcome, request_id, new_run_id::text from audit_log"
        " where action = 'run.resume' and run_id = any($1::uuid[])", parents)
    assert len(audit) == RUNS * PER_RUN
    by_request = Counter(a["request_id"] for a in audit)
    sent = {r.headers["x-request-id"]: (parent, actor, r) for parent, actor, r, _s in results}
    assert len(sent) == RUNS * PER_RUN and set(by_request) == set(sent) and set(by_request.values()) == {1}
    for a in audit:
        parent, actor, r = sent[a["request_id"]]
        assert (a["run_id"], a["actor_id"]) == (parent, actor)
        if r.status_code == 202:
            assert a["outcome"] == "accepted" and a["new_run_id"] == r.json()["id"]
        else:
            assert a["outcome"] == "rejected" and a["new_run_id"] is None

    # ---- and each child runs to completion once the upstream is fixed
    world.open(gate)
    procs.append(start_worker(faults_env, faults_logs, "races-drain"))
    children = [accepted[p][0] for p in parents]
    assert set((await wait_final(faults_db, children, 60, "resumed children")).values()) == {"succeeded"}

    latencies = [s * 1000 for *_x, s in results]
    record("resume_races", parents=RUNS, attempts=len(results), accepted=codes[202], rejected_409=codes[409],
           children=len(rows), duplicate_children=len(rows) - RUNS, audit_rows=len(audit),
           elapsed_s=round(elapsed, 2), attempt_p50_ms=round(percentile(latencies, 50), 1),
           attempt_p99_ms=round(percentile(latencies, 99), 1))
