"""A slow or stubborn upstream cannot hold the engine: `timeout_s` ends a trickling attempt, a
cancel aborts the request in flight, and a `Retry-After: 60` wait sleeps in the database (no slot
held, nothing sent after a cancel). Real worker processes, a loopback upstream that logs every
request it receives, the private PostgreSQL."""
from __future__ import annotations

import itertools
import uuid
from datetime import datetime

import pytest

from tests.conftest import steps_by_key
from tests.faults.conftest import start_worker, wait_final
from tests.support import wait_for
from tests.upstream import SlowUpstream

EGRESS = {"MESHHOOK_EGRESS_ALLOW": "127.0.0.1"}  # the upstream is on loopback


@pytest.fixture(scope="module")
def upstream():
    u = SlowUpstream()
    yield u
    u.close()


def node(key: str, type_: str, config: dict | None = None) -> dict:
    return {"id": key, "data": {"type": type_, "config": config or {}}}


def chain(*nodes: dict) -> dict:
    return {"nodes": list(nodes),
            "edges": [{"source": a["id"], "target": b["id"]} for a, b in itertools.pairwise(nodes)]}


async def step_row(db, run_id: str, key: str):
    return await db.fetchrow("select status, attempt, attempts, error, wake_at from step_runs"
                             " where run_id = $1 and step_key = $2", uuid.UUID(run_id), key)


def seconds(entry: dict) -> float:
    return (datetime.fromisoformat(entry["finished_at"]) - datetime.fromisoformat(entry["started_at"])).total_seconds()


async def test_a_trickling_upstream_ends_its_attempt_at_timeout_s(faults_env, faults_logs, faults_db, make_user,
                                                                  upstream, procs):
    name = f"trickle-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("deadline")
    wf = await owner.workflow(project, chain(
        node("start", "webhook"),
        node("call", "http_call", {"url": f"{upstream.url}/trickle/{name}?bytes=60&every=1", "timeout_s": 2,
                                   "retry": {"max_attempts": 2, "backoff_s": 0.1, "max_backoff_s": 0.2}})))
    procs.append(start_worker({**faults_env, **EGRESS}, faults_logs, "deadline"))
    run_id = await owner.start(wf["id"])
    await wait_final(faults_db, [run_id], 60, "the trickling run")

    run = await owner.run(run_id)
    assert run["status"] == "failed"
    row = await step_row(faults_db, run_id, "call")
    assert row["status"] == "failed" and row["error"]["type"] == "timeout"
    # Both attempts were sent, stored, and cut at the deadline, not after the 60 s body.
    sent = upstream.seen(name)
    assert len(sent) == 2 and row["attempt"] == 2
    assert [a["status"] for a in row["attempts"]] == ["retrying", "failed"]
    assert [a["attempt"] for a in row["attempts"]] == [1, 2]
    for entry in row["attempts"]:
        assert entry["error"]["type"] == "timeout"
        assert 1.5 < seconds(entry) < 10, entry
    assert not any(r["completed"] for r in sent)


async def test_cancel_aborts_the_request_in_flight_and_sends_nothing_more(faults_env, faults_logs, faults_db,
                                                                          make_user, upstream, procs):
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("cancel")
    wf = await owner.workflow(project, chain(
        node("start", "webhook"),
        node("call", "http_call", {"url": f"{upstream.url}/trickle/{name}?bytes=120&every=1", "timeout_s": 120}),
        node("after", "transform", {"expression": "`1`"})))
    procs.append(start_worker({**faults_env, **EGRESS}, faults_logs, "cancel"))
    run_id = await owner.start(wf["id"])

    async def in_flight():
        return len(upstream.seen(name)) == 1

    await wait_for(in_flight, 20, 0.05, "the request to reach the upstream")
    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    await wait_final(faults_db, [run_id], 15, "the cancelled run")

    run = await owner.run(run_id)
    assert run["status"] == "cancelled"
    steps = steps_by_key(run)
    assert steps["call"]["status"] == "cancelled" and steps["after"]["status"] == "cancelled"
    row = await step_row(faults_db, run_id, "call")
    assert row["attempt"] == 1 and [a["status"] for a in row["attempts"]] == ["cancelled"]

    async def closed():
        return all("ended" in r for r in upstream.seen(name))

    # The engine hung up: the upstream's 120 s answer was cut, and no other request came.
    await wait_for(closed, 10, 0.1, "the upstream to notice the aborted request")
    sent = upstream.seen(name)
    assert len(sent) == 1 and sent[0]["aborted"] and not sent[0]["completed"]


async def test_a_retry_after_60_wait_sleeps_in_the_database(faults_env, faults_logs, faults_db, make_user,
                                                            upstream, procs):
    name = f"later-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("retry-later")
    wf = await owner.workflow(project, chain(
        node("start", "webhook"),
        node("call", "http_call", {"url": f"{upstream.url}/retry/{name}?after=60",
                                   "retry": {"max_attempts": 5, "backoff_s": 1, "max_backoff_s": 120}})))
    quick = await owner.workflow(project, chain(node("start", "webhook"),
                                                node("t", "transform", {"expression": "`42`"})))
    # One slot only: if the wait held it, the second run could not start.
    procs.append(start_worker({**faults_env, **EGRESS, "MESHHOOK_WORKER_CONCURRENCY": "1"}, faults_logs, "later"))
    run_id = await owner.start(wf["id"])

    async def asleep():
        row = await faults_db.fetchrow("select status, lease_owner, wake_at from runs where id = $1",
                                       uuid.UUID(run_id))
        return row if row["wake_at"] is not None and row["lease_owner"] is None else None

    run_row = await wait_for(asleep, 20, 0.05, "the run to sleep in the database")
    assert run_row["status"] == "running"
    row = await step_row(faults_db, run_id, "call")
    assert row["status"] == "running" and row["attempt"] == 1 and row["wake_at"] is not None
    assert row["wake_at"] == run_row["wake_at"]
    [entry] = row["attempts"]
    assert (row["wake_at"] - datetime.fromisoformat(entry["finished_at"])).total_seconds() == pytest.approx(60, abs=1)
    assert entry["status"] == "retrying" and entry["retry_in_s"] == 60 and entry["error"]["status"] == 429
    assert datetime.fromisoformat(entry["started_at"]) <= datetime.fromisoformat(entry["finished_at"])

    other = await owner.start(quick["id"])
    done = await owner.wait(other, timeout=20)
    assert done["status"] == "succeeded"  # the sleeping run holds no slot

    r = await owner.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    await wait_final(faults_db, [run_id], 15, "the cancelled sleeping run")
    run = await owner.run(run_id)
    assert run["status"] == "cancelled"
    assert steps_by_key(run)["call"]["status"] == "cancelled"
    row = await step_row(faults_db, run_id, "call")
    assert row["attempt"] == 1 and row["wake_at"] is None
    assert len(upstream.seen(name)) == 1  # nothing was sent after the cancel


async def test_pause_during_a_retry_wait_pauses_the_step_and_sends_nothing(faults_env, faults_logs, faults_db,
                                                                          make_user, upstream, procs):
    """Pause lets in-flight requests finish; a step waiting for its next attempt is paused at once
    and resuming from it runs it again in the new run."""
    name = f"pause-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("retry-pause")
    wf = await owner.workflow(project, chain(
        node("start", "webhook"),
        node("call", "http_call", {"url": f"{upstream.url}/retry/{name}?after=60",
                                   "retry": {"max_attempts": 3, "backoff_s": 1, "max_backoff_s": 120}})))
    procs.append(start_worker({**faults_env, **EGRESS}, faults_logs, "pause"))
    run_id = await owner.start(wf["id"])

    async def waiting():
        row = await step_row(faults_db, run_id, "call")
        return row["wake_at"] is not None

    await wait_for(waiting, 20, 0.05, "the step to wait for its next attempt")
    r = await owner.post(f"/runs/{run_id}/pause")
    assert r.status_code == 202, r.text
    run = await owner.wait(run_id, timeout=15)
    assert run["status"] == "paused"
    assert steps_by_key(run)["call"]["status"] == "paused"
    row = await step_row(faults_db, run_id, "call")
    assert row["attempt"] == 1 and row["wake_at"] is None
    assert len(upstream.seen(name)) == 1

    r = await owner.resume(run_id, "call")
    assert r.status_code == 202, r.text
    child = r.json()["id"]

    async def sent_again():
        return len(upstream.seen(name)) == 2

    await wait_for(sent_again, 20, 0.05, "the resumed run to call again")
    await owner.post(f"/runs/{child}/cancel")


async def test_an_unstorable_body_never_crashes_the_driver_or_resends(faults_env, faults_logs, faults_db,
                                                                      make_user, upstream, procs):
    """A JSON body holding NUL: stored escaped, or the step fails `unstorable_output`; either way
    the request went out once and the run is not an engine error."""
    name = f"nul-{uuid.uuid4().hex[:8]}"
    owner = make_user()
    project = await owner.project("bytes")
    wf = await owner.workflow(project, chain(node("start", "webhook"),
                                             node("call", "http_call", {"url": f"{upstream.url}/nul/{name}"})))
    procs.append(start_worker({**faults_env, **EGRESS}, faults_logs, "bytes"))
    run_id = await owner.start(wf["id"])
    await wait_final(faults_db, [run_id], 30, "the NUL run")
    row = await step_row(faults_db, run_id, "call")
    assert row["status"] in ("succeeded", "failed")
    if row["status"] == "failed":
        assert row["error"]["type"] == "unstorable_output"
    assert row["attempt"] == 1
    assert len(upstream.seen(name)) == 1
    crashes = await faults_db.fetchval("select count(*) from run_events where run_id = $1 and type = 'engine_error'",
                                       uuid.UUID(run_id))
    assert crashes == 0
