"""http_call against a real local server: retries counted by the server, 4xx not retried,
timeouts, the Idempotency-Key, attempt counts and retry events, and output truncation."""
from __future__ import annotations

import uuid

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import FAST_RETRY, events, run_definition, step_detail, uniq


async def test_retryable_statuses_are_retried_with_one_idempotency_key_then_succeed(owner, world):
    name = uniq("seq")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"method": "POST", "url": f"{world.url}/seq/{name}?codes=500,429,408",
                               "body": {"x": 1}, "retry": {**FAST_RETRY, "max_attempts": 5}})))
    assert run["status"] == "succeeded", run
    seen = world.seen(name)
    assert len(seen) == 4  # 500, 429, 408, then 200
    assert {s["idempotency_key"] for s in seen} == {f"{run['id']}:call"}
    call = steps_by_key(run)["call"]
    assert call["status"] == "succeeded"
    assert call["attempt"] == 4
    assert call["output"]["status"] == 200
    assert call["output"]["body"] == {"n": 4, "status": 200}
    detail = await step_detail(owner, run["id"], "call")
    retried = [a for a in detail["attempts"] if a.get("error")]
    assert [a["error"]["status"] for a in retried] == [500, 429, 408]
    retry_events = [e for e in await events(owner, run["id"]) if e["type"] == "step_retrying"]
    assert [e["step_key"] for e in retry_events] == ["call"] * 3


async def test_flaky_500_is_retried_until_it_succeeds(owner, world):
    name = uniq("flaky")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/flaky/{name}?fail=2", "retry": FAST_RETRY})))
    assert run["status"] == "succeeded", run
    seen = world.seen(name)
    assert [r["status"] for r in seen] == [500, 500, 200]
    assert {r["idempotency_key"] for r in seen} == {f"{run['id']}:call"}
    assert steps_by_key(run)["call"]["attempt"] == 3


async def test_retries_give_up_after_max_attempts(owner, world):
    name = uniq("down")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/status/503/{name}", "retry": FAST_RETRY}),
        ("after", "transform", {"expression": "`1`"})))
    assert run["status"] == "failed"
    assert len(world.seen(name)) == 3
    steps = steps_by_key(run)
    assert steps["call"]["status"] == "failed"
    assert steps["call"]["attempt"] == 3
    assert steps["call"]["error"]["type"] == "http_error"
    assert steps["call"]["error"]["status"] == 503
    assert steps["after"]["status"] != "succeeded"
    assert run["error"]["step"] == "call"


async def test_client_errors_fail_at_once_without_retry(owner, world):
    for code in (404, 422):
        name = uniq(f"c{code}")
        run = await run_definition(owner, linear(
            ("start", "webhook", {}),
            ("call", "http_call", {"url": f"{world.url}/status/{code}/{name}", "retry": FAST_RETRY})))
        assert run["status"] == "failed"
        assert len(world.seen(name)) == 1, f"{code} was retried"
        call = steps_by_key(run)["call"]
        assert call["status"] == "failed"
        assert call["attempt"] == 1
        err = call["error"]
        assert err["type"] == "http_error" and err["status"] == code and str(code) in err["message"]
        assert not [e for e in await events(owner, run["id"]) if e["type"] == "step_retrying"]


async def test_timeouts_are_retried_then_fail_with_type_timeout(owner, world):
    name = uniq("slow")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/slow/{name}?s=1", "timeout_s": 0.2,
                               "retry": {**FAST_RETRY, "max_attempts": 2}})))
    assert run["status"] == "failed"
    call = steps_by_key(run)["call"]
    assert call["error"]["type"] == "timeout"
    assert call["attempt"] == 2
    assert world.counts[name] == 2  # counted when each request arrived
    assert len([e for e in await events(owner, run["id"]) if e["type"] == "step_retrying"]) == 1


async def test_request_is_rendered_and_output_recorded(owner, world):
    name = uniq("ok")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"method": "PUT", "url": f"{world.url}/ok/{name}",
                               "headers": {"X-Order": "{{ input.order }}"}, "query": {"q": "{{ input.n }}"},
                               "body": {"n": "{{ input.n }}", "s": "n={{ input.n }}!", "obj": "{{ input.obj }}",
                                        "plain": "no template"}})),
        {"order": "o-7", "n": 21, "obj": {"a": [1, 2]}})
    assert run["status"] == "succeeded", run
    (req,) = world.seen(name)
    assert req["method"] == "PUT"
    assert req["headers"]["x-order"] == "o-7"
    assert req["query"] == {"q": "21"}
    # A string that is exactly one template yields the raw value; otherwise text is substituted.
    assert req["body"] == {"n": 21, "s": "n=21!", "obj": {"a": [1, 2]}, "plain": "no template"}
    assert req["idempotency_key"] == f"{run['id']}:call"
    call = steps_by_key(run)["call"]
    assert call["input"]["body"]["n"] == 21
    assert call["output"]["status"] == 200
    assert call["output"]["body"]["body"]["s"] == "n=21!"


async def test_huge_outputs_are_stored_truncated(owner, world, db):
    name = uniq("big")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/big/{name}?kb=300"}),
        ("after", "transform", {"expression": "`\"done\"`"}),
        ("seen", "transform", {"expression": "steps.call._truncated"})))
    assert run["status"] == "succeeded", run
    call = steps_by_key(run)["call"]
    assert call["output_truncated"] is True
    size = await db.fetchval("select pg_column_size(output) from step_runs where run_id = $1 and step_key = 'call'",
                             uuid.UUID(run["id"]))
    raw = await db.fetchval("select length(output::text) from step_runs where run_id = $1 and step_key = 'call'",
                            uuid.UUID(run["id"]))
    assert raw <= 256 * 1024 and size <= 256 * 1024
    assert steps_by_key(run)["after"]["output"] == "done"
    # downstream steps see the stored (truncated) output, as a resumed run reusing the step would
    assert steps_by_key(run)["seen"]["output"] is True


async def test_huge_error_bodies_do_not_bloat_errors_or_attempts(owner, world, db):
    name = uniq("bigerr")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/seq/{name}?codes=500,500,500&kb=300", "retry": FAST_RETRY})))
    assert run["status"] == "failed"
    assert len(world.seen(name)) == 3
    call = steps_by_key(run)["call"]
    assert call["error"]["status"] == 500
    row = await db.fetchrow("select length(error::text) e, length(attempts::text) a, length(output::text) o"
                            " from step_runs where run_id = $1 and step_key = 'call'", uuid.UUID(run["id"]))
    assert row["e"] < 16 * 1024 and row["a"] < 64 * 1024 and (row["o"] or 0) <= 256 * 1024, dict(row)
