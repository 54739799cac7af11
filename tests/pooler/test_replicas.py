"""Two API replicas and two workers on one PgBouncer in transaction mode: what one replica
starts, a worker behind another server connection finishes, and a stream on the other replica
sees it happen; concurrent resumes sent to both replicas still start exactly one run."""
from __future__ import annotations

import asyncio
import uuid

from tests import support
from tests.conftest import linear
from tests.runs.test_event_stream import read_sse


async def test_a_stream_on_one_replica_sees_a_run_that_a_worker_finishes(pooled, pooled_client, world):
    owner_b = pooled_client(1)
    owner_a = pooled_client(0, owner_b.user_id)
    slow = f"pooled-{uuid.uuid4().hex[:6]}"
    project = await owner_b.project()
    wf = await owner_b.workflow(project, linear(
        ("start", "webhook", {}),
        ("slow", "http_call", {"url": f"{world.url}/slow/{slow}?s=0.5"}),
        ("done", "transform", {"expression": "steps.slow.status"})))
    run_id = await owner_b.start(wf["id"], {"n": 1})  # written through replica B
    streamed = await asyncio.wait_for(read_sse(pooled.replicas.api_urls[0], owner_a.token, run_id), 30)  # read on A

    assert [e["event"] for e in streamed][-1] == "run_succeeded"
    assert "step_started" in [e["event"] for e in streamed]
    run = await owner_a.run(run_id)
    assert run["status"] == "succeeded"
    assert {s["key"]: s["output"] for s in run["steps"]}["done"] == 200
    # the run was claimed by one of the two worker processes, not by an API replica
    async with pooled.pool.acquire() as c:
        owner = await c.fetchval("select payload->>'worker' from run_events where run_id = $1 and type = 'run_started'",
                                 uuid.UUID(run_id))
    assert owner and "replica-w" in owner


async def test_concurrent_resumes_on_both_replicas_start_exactly_one_run(pooled, pooled_client, world):
    owner = pooled_client(0)
    slow = {"url": f"{world.url}/slow/prace-{uuid.uuid4().hex[:6]}?s=5", "timeout_s": 1, "retry": {"max_attempts": 1}}
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}), ("call", "http_call", slow)))
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed"
    editor_a, editor_b = pooled_client(0), pooled_client(1)
    await owner.add_member(project, editor_a, "editor")
    await owner.add_member(project, editor_b, "editor")
    owner_b = pooled_client(1, owner.user_id)

    results = await asyncio.gather(*[c.resume(run["id"], "call")
                                     for _ in range(5) for c in (owner, editor_a, editor_b, owner_b)])
    codes = sorted(r.status_code for r in results)
    assert codes == [202] + [409] * 19, codes
    winner = next(r for r in results if r.status_code == 202).json()["id"]
    assert {r.json()["active_run_id"] for r in results if r.status_code == 409} == {winner}
    detail = await editor_b.run(run["id"])
    assert detail["resumed_runs"] == [winner]
    async with pooled.pool.acquire() as c:
        assert await c.fetchval("select count(*) from audit_log where run_id = $1 and action = 'run.resume'",
                                uuid.UUID(run["id"])) == 20


async def test_the_replicas_run_on_the_pooler_and_listen_directly(pooled, pooled_client, world):
    client = pooled_client()
    project = await client.project()
    wf = await client.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "input"})))
    runs = [await client.start(wf["id"], {"i": i}) for i in range(6)]
    for run_id in runs:
        assert (await client.wait(run_id))["status"] == "succeeded"
    assert min(pooled.replicas.proxy.served) > 0  # both API replicas answered
    async with pooled.pool.acquire() as c:
        listeners = await c.fetch("select application_name, count(*) from pg_stat_activity"
                                  " where datname = current_database() and application_name in"
                                  " ('meshhook-listener', 'meshhook-stream') group by 1 order by 1")
    # one LISTEN connection per worker and per API replica, straight to the server (outside the pooler)
    assert [(r[0], r[1]) for r in listeners] == [("meshhook-listener", 2), ("meshhook-stream", 2)]
    text = pooled.logs.joinpath("pooled.log").read_text(errors="replace")
    assert "prepared statement" not in text
    assert "no MESHHOOK_LISTEN_URL" not in text  # with a listen URL nothing falls back to polling


async def test_without_a_listen_url_the_service_says_it_polls_and_still_works(pooled, keys, world, logs_dir):
    env = dict(pooled.env, MESHHOOK_POLL_INTERVAL_S="0.3")
    env.pop("MESHHOOK_LISTEN_URL")
    log = logs_dir / "pooled-polling.log"
    api, base = await asyncio.to_thread(support.start_api, env, log, worker=False)
    worker = support.start_worker(env, log, "polling-w")
    from tests.conftest import Client

    client = Client(base, keys)
    try:
        project = await client.project()
        wf = await client.workflow(project, linear(("start", "webhook", {}),
                                                   ("slow", "http_call", {"url": f"{world.url}/slow/poll?s=0.3"})))
        run_id = await client.start(wf["id"])
        streamed = await asyncio.wait_for(read_sse(base, client.token, run_id), 30)
        assert streamed[-1]["event"] == "run_succeeded"

        async def both_said_so():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if "no MESHHOOK_LISTEN_URL" in ln]
            return lines if len(lines) >= 2 else None

        lines = await support.wait_for(both_said_so, 10, 0.1, "the API and the worker to say they poll")
        assert len(lines) == 2  # one line per process, at start
        assert all("poll" in ln for ln in lines)
    finally:
        await client.aclose()
        await asyncio.to_thread(worker.terminate)
        await asyncio.to_thread(api.terminate)
