"""Worker faults on a database of their own (so the session service's worker cannot take
the runs): a worker SIGKILLed inside an http_call is taken over after its lease expires,
SIGTERM hands runs back, and a listener whose backend is terminated reconnects.

The victims are real `meshhook worker` processes (they get signals); the workers that take
over run in the test's event loop, which saves a process start-up each."""
from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from app.db.engine import init_connection
from app.engine.worker import Worker
from app.secrets.crypto import Cipher
from app.settings import Settings
from tests import support
from tests.conftest import Client, linear, steps_by_key
from tests.engine.conftest import events, uniq
from tests.support import wait_for


@contextlib.asynccontextmanager
async def in_process_worker(isolated, name: str, poll_interval_s: float = 0.5):
    settings = Settings(database_url=isolated.url, poll_interval_s=poll_interval_s, lease_s=3, shutdown_grace_s=3,
                        egress_allow=isolated.env["MESHHOOK_EGRESS_ALLOW"])
    w = Worker(settings, isolated.url, Cipher(support.SECRET_KEY), name=name)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture(scope="module")
async def isolated(admin_url, jwks_server, keys, logs_dir, world):
    """A second migrated database with an API that runs no worker: the test's workers are the only ones."""
    name = f"meshhook_test_faults_{uuid.uuid4().hex[:8]}"
    url = await support.create_database(admin_url, name)
    from app.db.migrate import upgrade

    await asyncio.to_thread(upgrade, url)
    env = support.service_env(url, jwks_server.url, MESHHOOK_EGRESS_ALLOW=support.egress_allow(world))
    api, base = await asyncio.to_thread(support.start_api, env, logs_dir / "faults-api.log", worker=False)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2, init=init_connection)
    client = Client(base, keys)
    yield type("Isolated", (), {"env": env, "url": url, "name": name, "pool": pool, "client": client,
                                "logs": logs_dir})
    await client.aclose()
    await pool.close()
    api.terminate()
    await support.drop_database(admin_url, name)


async def test_a_killed_worker_is_taken_over_and_no_step_succeeds_twice(isolated, world):
    client, pool = isolated.client, isolated.pool
    gate = uniq("gate")
    project = await client.project()
    wf = await client.workflow(project, linear(
        ("start", "webhook", {}),
        ("pre", "transform", {"expression": "input.n"}),
        ("call", "http_call", {"method": "POST", "url": f"{world.url}/gate/{gate}",
                               "retry": {"max_attempts": 10, "backoff_s": 0.5, "max_backoff_s": 1.0}}),
        ("post", "transform", {"expression": "steps.call.status"})))
    a = support.start_worker(isolated.env, isolated.logs / "faults-worker-a.log", "victim")
    try:
        run_id = await client.start(wf["id"], {"n": 7})

        async def inside_the_call():
            return len(world.seen(gate)) >= 1

        await wait_for(inside_the_call, 20, 0.02, "worker A to call the closed gate")
        lease = await pool.fetchrow("select lease_owner, lease_expires_at from runs where id = $1", uuid.UUID(run_id))
        assert ":victim:" in lease["lease_owner"]

        async def renewed():  # the heartbeat extends the lease while the step is in flight
            row = await pool.fetchrow("select lease_owner, lease_expires_at from runs where id = $1",
                                      uuid.UUID(run_id))
            assert row["lease_owner"] is not None, "the run was released before the worker could be killed"
            return row["lease_expires_at"] > lease["lease_expires_at"] and row["lease_owner"] == lease["lease_owner"]

        await wait_for(renewed, 10, 0.1, "the victim's heartbeat to renew its lease")
        a.kill()  # SIGKILL: no cleanup, the lease stays until it expires
        tried_by_a = len(world.seen(gate))
        world.open(gate)
        async with in_process_worker(isolated, "rescuer"):
            run = await client.wait(run_id, timeout=30)
    finally:
        a.kill()

    assert run["status"] == "succeeded", run
    s = steps_by_key(run)
    assert [s[k]["status"] for k in ("start", "pre", "call", "post")] == ["succeeded"] * 4
    assert s["post"]["output"] == 200
    assert s["call"]["attempt"] > tried_by_a

    seen = world.seen(gate)
    assert len(seen) > tried_by_a, "the rescuer never re-sent the request"
    assert {r["idempotency_key"] for r in seen} == {f"{run_id}:call"}
    assert seen[-1]["status"] == 200

    evs = await events(client, run_id)
    taken = [e for e in evs if e["type"] == "run_taken_over"]
    assert len(taken) == 1 and ":rescuer:" in taken[0]["payload"]["worker"]
    for key in ("start", "pre", "call", "post"):
        assert sum(1 for e in evs if e["type"] == "step_succeeded" and e["step_key"] == key) == 1, key
    # Steps finished before the crash were not executed again.
    assert sum(1 for e in evs if e["type"] == "step_started" and e["step_key"] == "pre") == 1
    attempts = await pool.fetchval("select attempts from step_runs where run_id = $1 and step_key = 'call'",
                                   uuid.UUID(run_id))
    assert sum(1 for a_ in attempts if a_.get("status") == "succeeded") == 1
    row = await pool.fetchrow("select lease_owner, finished_at from runs where id = $1", uuid.UUID(run_id))
    assert row["lease_owner"] is None and row["finished_at"] is not None


async def test_the_listener_reconnects_after_its_backend_is_terminated(isolated):
    client, pool = isolated.client, isolated.pool
    project = await client.project()
    wf = await client.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "input"})))

    async def listener_pid():
        return await pool.fetchval(
            "select pid from pg_stat_activity where application_name = 'meshhook-listener'"
            " and datname = current_database() order by backend_start desc limit 1")

    # Polling is effectively off: only LISTEN/NOTIFY (and the reconcile on reconnect) can pick runs up.
    async with in_process_worker(isolated, "listener", poll_interval_s=60) as w:
        first_pid = await wait_for(listener_pid, 20, 0.05, "the listener to connect")
        run = await client.wait(await client.start(wf["id"], {"n": 1}), timeout=15)
        assert run["status"] == "succeeded"

        assert await pool.fetchval("select pg_terminate_backend($1)", first_pid)
        reconciled = await client.start(wf["id"], {"n": 2})  # may land while the listener is down

        async def new_listener():
            pid = await listener_pid()
            return pid if pid and pid != first_pid else None

        await wait_for(new_listener, 20, 0.05, "a new listener backend")
        assert (await client.wait(reconciled, timeout=15))["status"] == "succeeded"
        notified = await client.wait(await client.start(wf["id"], {"n": 3}), timeout=15)
        assert notified["status"] == "succeeded"
        assert steps_by_key(notified)["t"]["output"] == {"n": 3}
        assert w.listener_connects == 2


async def test_sigterm_lets_the_inflight_step_finish_and_hands_the_run_back(isolated, world):
    client, pool = isolated.client, isolated.pool
    first, second = uniq("slow"), uniq("slow")
    project = await client.project()
    wf = await client.workflow(project, linear(
        ("start", "webhook", {}),
        ("first", "http_call", {"url": f"{world.url}/slow/{first}?s=0.8"}),
        ("second", "http_call", {"url": f"{world.url}/slow/{second}?s=0.1"})))
    a = support.start_worker(isolated.env, isolated.logs / "faults-worker-term.log", "leaving")
    try:
        run_id = await client.start(wf["id"])

        async def inside_the_call():
            return world.counts[first] >= 1

        await wait_for(inside_the_call, 20, 0.02, "the first call to arrive")
        code = await asyncio.to_thread(a.terminate, 15)
        assert code == 0, a.text()[-2000:]

        # The in-flight step finished; nothing new started; the lease was handed back.
        row = await pool.fetchrow("select status, lease_owner from runs where id = $1", uuid.UUID(run_id))
        assert (row["status"], row["lease_owner"]) == ("running", None)
        steps = {r["step_key"]: r["status"] for r in await pool.fetch(
            "select step_key, status from step_runs where run_id = $1", uuid.UUID(run_id))}
        assert steps == {"start": "succeeded", "first": "succeeded", "second": "pending"}
        assert world.counts[second] == 0

        async with in_process_worker(isolated, "next"):
            run = await client.wait(run_id, timeout=20)
    finally:
        a.kill()
    assert run["status"] == "succeeded"
    assert world.counts[first] == 1 and world.counts[second] == 1


async def test_runs_cancelled_or_paused_while_queued_start_nothing(isolated):
    client = isolated.client
    project = await client.project()
    wf = await client.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "`1`"})))
    to_cancel = await client.start(wf["id"])
    to_pause = await client.start(wf["id"])
    r = await client.post(f"/runs/{to_cancel}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert (await client.post(f"/runs/{to_pause}/pause")).status_code == 202
    async with in_process_worker(isolated, "queued"):
        cancelled = await client.wait(to_cancel, timeout=20)
        paused = await client.wait(to_pause, timeout=20)
    assert cancelled["status"] == "cancelled"
    assert all(s["status"] == "cancelled" and s["attempt"] == 0 for s in cancelled["steps"])
    assert paused["status"] == "paused"
    s = steps_by_key(paused)
    assert (s["start"]["status"], s["t"]["status"]) == ("paused", "pending")
    assert s["start"]["attempt"] == 0


async def test_a_run_that_keeps_crashing_the_driver_fails_instead_of_looping(owner, db):
    """A stored definition the engine cannot load (written behind the API's back) crashes the driver;
    after three crashes the run is failed with an engine_error, visible on its timeline."""
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {})))
    run_id = uuid.uuid4()
    async with db.acquire() as c:
        await c.execute("insert into workflow_versions (workflow_id, project_id, version, definition)"
                        " values ($1, $2, 2, '{\"nodes\": \"not a list\"}')", uuid.UUID(wf["id"]), uuid.UUID(project))
        await c.execute("insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, root_run_id)"
                        " values ($1, $2, $3, 2, 'queued', 'api', $1)", run_id, uuid.UUID(project), uuid.UUID(wf["id"]))
        await c.execute("select pg_notify('meshhook_runs', $1)", str(run_id))
    run = await owner.wait(str(run_id), ("failed",), timeout=30)
    assert run["error"]["type"] == "engine_error"
    evs = await events(owner, str(run_id))
    assert [e["type"] for e in evs].count("engine_error") == 3
    assert evs[-1]["type"] == "run_failed"
    assert run["eligible_steps"] == []  # the API shows it without the definition, not with a 500
    r = await owner.resume(str(run_id), "start")
    assert r.status_code == 409 and r.json()["eligible_steps"] == []
