"""Exact accounting across SIGKILLs: one worker is killed again and again mid-run next to a steady
one, and afterwards the books are checked against the upstream's own request log.

- No step write ever regressed (a tracing trigger records any update that lowers a step's attempt
  or status rank, or rewrites a settled step).
- Per http step: the stored attempt number equals the requests sent, give or take one attempt per
  takeover, recorded as `worker_lost`; the attempts list numbers every attempt exactly once, each
  with ISO-8601 start and end; one `step_started` event per attempt.
- Event ids follow the DAG: no step starts before its parents succeeded, nothing of a step comes
  after its success, and every step succeeded exactly once."""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from datetime import datetime

import pytest

from tests.faults.conftest import record, start_worker, wait_final
from tests.upstream import SlowUpstream

RUNS = 40
KILLS = 10
LEASE_S = "1.5"
EGRESS = {"MESHHOOK_EGRESS_ALLOW": "127.0.0.1"}
FAST_RETRY = {"max_attempts": 4, "backoff_s": 0.05, "max_backoff_s": 0.2}

TRACE = """
create table if not exists test_step_regressions (
  run_id uuid, step_key text, old_status text, new_status text, old_attempt int, new_attempt int);
create or replace function test_trace_step() returns trigger language plpgsql as $$
begin
  if new.attempt < old.attempt
     or (new.attempt = old.attempt and meshhook_step_rank(new.status) < meshhook_step_rank(old.status))
     or (meshhook_step_rank(old.status) = 3 and (new.status <> old.status or new.attempt <> old.attempt)) then
    insert into test_step_regressions values (old.run_id, old.step_key, old.status, new.status, old.attempt, new.attempt);
  end if;
  return new;
end $$;
drop trigger if exists trg_test_trace_step on step_runs;
create trigger trg_test_trace_step after update on step_runs for each row execute function test_trace_step();
"""
UNTRACE = """
drop trigger if exists trg_test_trace_step on step_runs;
drop function if exists test_trace_step();
drop table if exists test_step_regressions;
"""


@pytest.fixture
def upstream():
    u = SlowUpstream()
    yield u
    u.close()


@pytest.fixture
async def traced(faults_db):
    await faults_db.execute(TRACE)
    yield
    await faults_db.execute(UNTRACE)


def node(key: str, type_: str, config: dict | None = None) -> dict:
    return {"id": key, "data": {"type": type_, "config": config or {}}}


def definition(url: str, tag: str) -> dict:
    return {
        "nodes": [
            node("start", "webhook"),
            node("a", "http_call", {"url": f"{url}/slow/{tag}?s=0.4", "retry": FAST_RETRY}),
            node("b", "http_call", {"method": "POST", "url": f"{url}/flaky/{tag}?fail=1", "body": {"n": "{{ input.n }}"},
                                    "retry": FAST_RETRY}),
            node("join", "transform", {"expression": "[steps.a.status, steps.b.status]"}),
            node("c", "http_call", {"url": f"{url}/slow/{tag}?s=0.3", "retry": FAST_RETRY}),
            node("fin", "transform", {"expression": "steps.c.status"}),
        ],
        "edges": [{"source": "start", "target": "a"}, {"source": "start", "target": "b"},
                  {"source": "a", "target": "join"}, {"source": "b", "target": "join"},
                  {"source": "join", "target": "c"}, {"source": "c", "target": "fin"}],
    }


PARENTS = {"start": [], "a": ["start"], "b": ["start"], "join": ["a", "b"], "c": ["join"], "fin": ["c"]}
HTTP = ("a", "b", "c")


async def test_attempts_and_events_stay_exact_across_sigkills(faults_env, faults_logs, faults_db, make_user,
                                                              upstream, procs, traced):
    rng = random.Random(12)
    tag = f"acct-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("accounting")
    wf = (await owner.workflow(project, definition(upstream.url, tag)))["id"]
    env = {**faults_env, **EGRESS, "MESHHOOK_LEASE_S": LEASE_S, "MESHHOOK_LOG_LEVEL": "INFO"}
    steady = start_worker(env, faults_logs, "steady", MESHHOOK_WORKER_CONCURRENCY="2")
    procs.append(steady)
    victim = start_worker(env, faults_logs, "victim")
    procs.append(victim)

    async def victim_inflight() -> int:
        return await faults_db.fetchval(
            "select count(*) from step_runs s join runs r on r.id = s.run_id"
            " where r.lease_owner like '%:victim:%' and s.status = 'running' and s.step_type = 'http_call'"
            " and s.wake_at is null")

    async def victim_up() -> None:
        deadline = time.monotonic() + 60
        while "worker started" not in victim.text():
            assert time.monotonic() < deadline and victim.p.poll() is None, "the victim did not start"
            await asyncio.sleep(0.05)

    runs: list[str] = []
    kills = 0
    hit = 0
    for cycle in range(KILLS):
        await victim_up()  # a loaded machine takes seconds to start a process: kill work, not start-up
        for _ in range(-(-(RUNS - len(runs)) // (KILLS - cycle))):
            runs.append(await owner.start(wf, {"n": len(runs)}))
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not await victim_inflight():
            await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0, 0.3))
        hit += await victim_inflight()
        victim.kill()
        kills += 1
        victim = start_worker(env, faults_logs, "victim")
        procs.append(victim)

    statuses = await wait_final(faults_db, runs, 120, "accounting runs")
    ids = [uuid.UUID(r) for r in runs]
    assert all(s == "succeeded" for s in statuses.values()), statuses

    regressions = await faults_db.fetch("select * from test_step_regressions where run_id = any($1::uuid[])", ids)
    assert not regressions, [dict(r) for r in regressions[:5]]

    rows = await faults_db.fetch("select run_id::text, step_key, status, attempt, attempts from step_runs"
                                 " where run_id = any($1::uuid[])", ids)
    events = await faults_db.fetch("select id, run_id::text, type, step_key, payload from run_events"
                                   " where run_id = any($1::uuid[]) order by id", ids)
    with upstream.lock:
        sent = defaultdict(int)
        for r in upstream.requests:
            if r["name"] == tag:
                sent[r["idempotency_key"]] += 1

    started_events = defaultdict(int)
    for e in events:
        if e["type"] == "step_started":
            started_events[(e["run_id"], e["step_key"])] += 1

    problems = []
    lost_total = 0
    for row in rows:
        run_id, key, n = row["run_id"], row["step_key"], row["attempt"]
        entries = row["attempts"]
        if [a["attempt"] for a in entries] != list(range(1, n + 1)):
            problems.append((run_id, key, "attempt numbers", n, [a["attempt"] for a in entries]))
            continue
        for a in entries:
            if datetime.fromisoformat(a["started_at"]) > datetime.fromisoformat(a["finished_at"]):
                problems.append((run_id, key, "times", a))
        if entries[-1]["status"] != "succeeded" or any(
                a["status"] not in ("retrying", "worker_lost") for a in entries[:-1]):
            problems.append((run_id, key, "statuses", [a["status"] for a in entries]))
        if started_events[(run_id, key)] != n:
            problems.append((run_id, key, "step_started events", started_events[(run_id, key)], n))
        if key in HTTP:
            lost = sum(1 for a in entries if a["status"] == "worker_lost")
            lost_total += lost
            s = sent[f"{run_id}:{key}"]
            # Never sent without its attempt stored first; every attempt not lost was sent.
            if not (n - lost <= s <= n):
                problems.append((run_id, key, "sent vs stored", s, n, lost))
        elif n != 1:
            problems.append((run_id, key, "pure step attempts", n))
    assert not problems, problems[:10]

    # ---- events in causal order, per run
    by_run = defaultdict(list)
    for e in events:
        by_run[e["run_id"]].append(e)
    order_problems = []
    for run_id, evs in by_run.items():
        succeeded_at: dict[str, int] = {}
        for e in evs:
            key = e["step_key"]
            if key is None:
                continue
            if key in succeeded_at:
                order_problems.append((run_id, key, "event after success", e["type"]))
            if e["type"] == "step_started":
                missing = [p for p in PARENTS[key] if p not in succeeded_at]
                if missing:
                    order_problems.append((run_id, key, "started before parents", missing))
            if e["type"] == "step_succeeded":
                succeeded_at[key] = e["id"]
        if set(succeeded_at) != set(PARENTS):
            order_problems.append((run_id, "succeeded once each", sorted(succeeded_at)))
    assert not order_problems, order_problems[:10]

    taken_over = sum(1 for e in events if e["type"] == "run_taken_over")
    record("crash_accounting", runs=RUNS, kills=kills, http_steps_in_flight_at_kills=hit, runs_taken_over=taken_over,
           attempts_lost=lost_total, requests_sent=sum(sent.values()),
           attempts_stored=sum(r["attempt"] for r in rows if r["step_key"] in HTTP))
    assert kills == KILLS and taken_over > 0 and hit > 0  # the kills hit requests in flight


async def test_a_takeover_records_the_lost_attempt_and_sends_the_next_number(faults_env, faults_logs, faults_db,
                                                                             make_user, upstream, procs):
    """Killed in the middle of a request, a worker's attempt is not reused: the next owner records
    it as `worker_lost` (its real start time kept) and sends attempt 2, stored before it goes out."""
    tag = f"lost-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("takeover")
    wf = (await owner.workflow(project, {
        "nodes": [node("start", "webhook"), node("call", "http_call", {"url": f"{upstream.url}/slow/{tag}?s=3"})],
        "edges": [{"source": "start", "target": "call"}]}))["id"]
    env = {**faults_env, **EGRESS, "MESHHOOK_LEASE_S": LEASE_S}
    first = start_worker(env, faults_logs, "first")
    procs.append(first)
    run_id = await owner.start(wf)
    deadline = time.monotonic() + 30
    while not upstream.seen(tag):
        assert time.monotonic() < deadline, "the first worker never sent the request"
        await asyncio.sleep(0.02)
    first.kill()
    procs.append(start_worker(env, faults_logs, "second"))
    await wait_final(faults_db, [run_id], 60, "the taken-over run")

    row = await faults_db.fetchrow("select status, attempt, attempts from step_runs where run_id = $1"
                                   " and step_key = 'call'", uuid.UUID(run_id))
    assert row["status"] == "succeeded" and row["attempt"] == 2
    lost, ok = row["attempts"]
    assert (lost["attempt"], lost["status"], lost["error"]["type"]) == (1, "worker_lost", "worker_lost")
    assert (ok["attempt"], ok["status"]) == (2, "succeeded")
    sent = upstream.seen(tag)
    assert len(sent) == 2 and {r["idempotency_key"] for r in sent} == {f"{run_id}:call"}
    # The lost attempt keeps the time it was sent, not the takeover's.
    assert abs(datetime.fromisoformat(lost["started_at"]).timestamp() - sent[0]["started"]) < 1.0
    assert datetime.fromisoformat(lost["finished_at"]) <= datetime.fromisoformat(ok["started_at"])
    evs = await faults_db.fetch("select type, step_key, payload from run_events where run_id = $1 order by id",
                                uuid.UUID(run_id))
    call = [(e["type"], e["payload"].get("attempt")) for e in evs if e["step_key"] == "call"]
    assert call == [("step_started", 1), ("step_retrying", 1), ("step_started", 2), ("step_succeeded", 2)]
    assert [e["type"] for e in evs if e["step_key"] is None][-1] == "run_succeeded"
