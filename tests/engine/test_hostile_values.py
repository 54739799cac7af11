"""Hostile values through the real service: an expression that blows up fails with
`expression_limit` while the API keeps answering; bodies and values PostgreSQL cannot hold as is
(a PNG, JSON or text with NUL, a NUL literal) are stored safely, and every request is sent once."""
from __future__ import annotations

import asyncio
import base64
import time

import httpx

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import edge, node, run_definition, step_detail, uniq
from tests.support import PNG_1X1

DOUBLING = "input.v" + " | [@,@]" * 26  # 215 characters; 2^26 leaves once serialized
MATERIALIZING = "input.v" + " | [@,@]" * 22 + " | []" * 21  # really builds ever longer lists


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


async def test_a_blowup_expression_fails_with_expression_limit_while_the_api_stays_live(owner, service):
    project = await owner.project()
    wfs = [await owner.workflow(project, linear(("start", "webhook", {}), ("blow", "transform", {"expression": e})))
           for e in (DOUBLING, MATERIALIZING)]
    branchy = await owner.workflow(project, linear(("start", "webhook", {}),
                                                   ("check", "branch", {"condition": DOUBLING})))
    peak_before = _peak_rss_kb(service.proc.p.pid)
    latencies: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                assert (await http.get("/healthz")).status_code == 200
                latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        run_ids = [await owner.start(wf["id"], {"v": 1}) for wf in [*wfs, branchy] for _ in range(2)]
        runs = [await owner.wait(run_id, timeout=60) for run_id in run_ids]
    finally:
        stop.set()
        await prober

    for run in runs:
        assert run["status"] == "failed", run
        failed = [s for s in run["steps"] if s["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["error"]["type"] == "expression_limit", failed
    detail = await step_detail(owner, runs[0]["id"], "blow")
    assert detail["error"]["type"] == "expression_limit" and "exceeds the limit" in detail["error"]["message"]
    assert detail["output"] is None
    # Liveness only (speed is measured by bench/): the API answered all along.
    assert latencies and max(latencies) < 1.0, max(latencies)
    # Nothing was expanded: 2^26 leaves would have taken hundreds of MB.
    assert _peak_rss_kb(service.proc.p.pid) - peak_before < 100_000
    # And the engine carries on with ordinary work.
    ok = await run_definition(owner, linear(("start", "webhook", {}), ("t", "transform", {"expression": "input.v"})),
                              {"v": 7}, project_id=project)
    assert ok["status"] == "succeeded" and steps_by_key(ok)["t"]["output"] == 7


async def test_bodies_a_database_cannot_hold_as_is_are_stored_safely_and_requested_once(owner, world):
    names = {kind: uniq(kind) for kind in ("png", "nuljson", "nultext")}
    definition = linear(
        ("start", "webhook", {}),
        *[(kind, "http_call", {"url": f"{world.url}/bytes/{kind}/{name}"}) for kind, name in names.items()],
        ("after", "transform", {"expression": "[steps.png.body.content_type, steps.nuljson.body.name, "
                                              "steps.nultext.body]"}))
    run = await run_definition(owner, definition)

    assert run["status"] == "succeeded", run
    for kind, name in names.items():
        assert len(world.seen(name)) == 1, kind  # sent exactly once: no crash, no takeover
    steps = steps_by_key(run)
    assert all(steps[k]["attempt"] == 1 for k in names)
    png = (await step_detail(owner, run["id"], "png"))["output"]["body"]
    assert png == {"base64": base64.b64encode(PNG_1X1).decode(), "content_type": "image/png"}
    assert base64.b64decode(png["base64"]) == PNG_1X1
    nuljson = await step_detail(owner, run["id"], "nuljson")
    assert nuljson["output"]["body"] == {"name": "a\\u0000b", "list": ["\\u0000"], "key\\u0000": 1}
    nultext = await step_detail(owner, run["id"], "nultext")
    assert nultext["output"]["body"] == "line one\\u0000line two\\u0000"
    assert steps["after"]["output"] == ["image/png", "a\\u0000b", "line one\\u0000line two\\u0000"]


async def test_a_nul_literal_is_stored_escaped_and_sent_escaped(owner, world):
    name = uniq("ok")
    run = await run_definition(owner, linear(
        ("start", "webhook", {}),
        ("nul", "transform", {"expression": '`"a\\u0000b"`'}),
        ("len", "transform", {"expression": "length(steps.nul)"}),
        ("call", "http_call", {"method": "POST", "url": f"{world.url}/ok/{name}",
                               "body": {"v": '{{ `"x\\u0000y"` }}', "w": "{{ steps.nul }}"}})))
    assert run["status"] == "succeeded", run
    steps = steps_by_key(run)
    assert steps["nul"]["output"] == "a\\u0000b"  # the six visible characters \u0000
    assert steps["len"]["output"] == 8
    [request] = world.seen(name)
    assert request["body"] == {"v": "x\\u0000y", "w": "a\\u0000b"}
    detail = await step_detail(owner, run["id"], "call")
    assert detail["input"]["body"] == {"v": "x\\u0000y", "w": "a\\u0000b"}


async def test_a_result_without_a_storable_form_fails_the_step_with_unstorable_output(owner):
    definition = {"nodes": [node("start", "webhook"), node("nan", "transform", {"expression": "to_number('NaN')"}),
                            node("big", "transform", {"expression": "`123456789012345678901234567890`"})],
                  "edges": [edge("start", "nan"), edge("start", "big")]}
    run = await run_definition(owner, definition)
    assert run["status"] == "failed"
    failed = {s["key"]: s["error"] for s in run["steps"] if s["status"] == "failed"}
    assert failed and {e["type"] for e in failed.values()} == {"unstorable_output"}
    for key, error in failed.items():
        detail = await step_detail(owner, run["id"], key)
        assert detail["error"] == error and detail["attempt"] == 1


async def test_a_template_that_blows_up_or_quotes_nul_fails_its_step_before_any_request(owner, world):
    project = await owner.project()
    cases = {"huge": ({"method": "POST", "body": {"x": "{{ to_string(" + DOUBLING + ") }}"}}, "over the limit"),
             "nul": ({"query": {"q": '{{ abs(`"a\\u0000b"`) }}'}}, "a\\u0000b")}
    for key, (config, says) in cases.items():
        name = uniq("ok")
        run = await run_definition(owner, linear(("start", "webhook", {}),
                                                 (key, "http_call", {"url": f"{world.url}/ok/{name}", **config})),
                                   {"v": 1}, project_id=project)
        assert run["status"] == "failed", run
        assert world.seen(name) == []  # the request was never sent
        error = steps_by_key(run)[key]["error"]
        assert says in error["message"] and "\x00" not in error["message"], error
