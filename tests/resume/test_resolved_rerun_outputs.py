"""Resume, second edition (DESIGN §10.1, §10.2): resolved runs, deliberate re-runs and "mark succeeded with
this output", through real HTTP against the running service, counting what the outside world receives."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import uuid

import orjson

from tests.conftest import steps_by_key
from tests.resume.test_resume_shapes import gate_call, node


def chain(*nodes: dict) -> dict:
    return {"nodes": list(nodes), "edges": [{"source": a["id"], "target": b["id"]} for a, b in itertools.pairwise(nodes)]}


def ok_call(world, name: str, body=None) -> dict:
    return {"method": "POST", "url": f"{world.url}/ok/{name}", "body": body or {"run": "{{ run.id }}"},
            "retry": {"max_attempts": 1}}


def approval_flow(world, charge: str) -> dict:
    """An order that waits for a person at `review`, then charges (an upstream call) and sums up."""
    return chain(node("start", "webhook"), node("review", "pause", {"message": "approve?"}),
                 node("charge", "http_call", ok_call(world, charge, {"amount": "{{ input.amount }}"})),
                 node("total", "transform", {"expression": "{amount: input.amount, charged: steps.charge.status}"}))


def problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["request_id"] and body["detail"]
    return body


async def paused_order(owner, world, project=None):
    charge = f"charge-{uuid.uuid4().hex[:8]}"
    project = project or await owner.project()
    wf = await owner.workflow(project, approval_flow(world, charge))
    run = await owner.wait(await owner.start(wf["id"], {"amount": 250}))
    assert run["status"] == "paused" and run["eligible_steps"] == ["review"]
    return project, wf, run, charge


async def needs_attention(client, project) -> list[str]:
    r = await client.get("/runs", params={"project_id": project, "unresolved": "true"})
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


async def audit_rows(db, run_id):
    async with db.acquire() as c:
        return await c.fetch("select * from audit_log where run_id = $1 and action = 'run.resume' order by id",
                             uuid.UUID(run_id))


# ---------------------------------------------------------------- §10.1 resolved runs
async def test_a_second_approval_never_reaches_downstream(owner, world, db):
    project, _, run, charge = await paused_order(owner, world)
    assert run["resolved_by"] is None and await needs_attention(owner, project) == [run["id"]]

    r = await owner.resume(run["id"], "review", reason="approved")
    assert r.status_code == 202, r.text
    assert r.json()["resolved_by"] is None and r.json()["rerun"] is False
    child = await owner.wait(r.json()["id"])
    assert child["status"] == "succeeded" and len(world.seen(charge)) == 1

    parent = await owner.run(run["id"])
    assert parent["status"] == "paused" and parent["resolved_by"] == child["id"]
    assert parent["eligible_steps"] == ["review"]  # the PRD set is unchanged…
    assert parent["rerunnable_steps"] == ["start", "review"]  # …and a resolved run may be re-run
    assert await needs_attention(owner, project) == []

    again = problem(await owner.resume(run["id"], "review", reason="approved"), 409)
    assert again["resolved_by"] == child["id"] and "rerun" in again["detail"]
    plan = problem(await owner.get(f"/runs/{run['id']}/resume-plan", params={"from_step": "review"}), 409)
    assert plan["resolved_by"] == child["id"]
    await asyncio.sleep(0.3)
    assert len(world.seen(charge)) == 1  # the downstream call never happened a second time
    assert (await owner.run(run["id"]))["resumed_runs"] == [child["id"]]
    rows = await audit_rows(db, run["id"])
    assert [(x["outcome"], x["status_code"]) for x in rows] == [("accepted", 202), ("rejected", 409)]
    assert rows[1]["detail"]["resolved_by"] == child["id"]

    # A deliberate re-run is still possible, and says so everywhere.
    r = await owner.resume(run["id"], "review", rerun=True, reason="charge again on purpose")
    assert r.status_code == 202, r.text
    assert r.json()["rerun"] is True
    second = await owner.wait(r.json()["id"])
    assert second["status"] == "succeeded" and second["rerun"] is True and len(world.seen(charge)) == 2
    events = (await owner.get(f"/runs/{second['id']}/events")).json()["items"]
    resumed = next(e for e in events if e["type"] == "run_resumed")
    assert resumed["payload"]["rerun_requested"] is True and resumed["payload"]["override"] == []
    assert (await owner.run(run["id"]))["resolved_by"] == child["id"]  # the first success stays the answer


async def test_the_needs_attention_list_follows_the_lineage(owner, world):
    """P paused → C1 (approval) fails at the charge → G (resume of C1) succeeds: all resolved by G.
    Q paused → C (approval) is cancelled: both still need attention, and neither is resolved."""
    gate = f"att-{uuid.uuid4().hex[:6]}"
    project = await owner.project()
    d = chain(node("start", "webhook"), node("review", "pause"), node("charge", "http_call", gate_call(world, gate)),
              node("done", "transform", {"expression": "steps.charge.status"}))
    wf = await owner.workflow(project, d)
    p = await owner.wait(await owner.start(wf["id"]))
    c1 = await owner.wait((await owner.resume(p["id"], "review")).json()["id"])
    assert c1["status"] == "failed"
    assert set(await needs_attention(owner, project)) == {p["id"], c1["id"]}
    assert c1["rerunnable_steps"] == ["start", "review", "charge"] and c1["eligible_steps"] == ["charge"]

    world.open(gate)
    g = await owner.wait((await owner.resume(c1["id"], "charge")).json()["id"])
    assert g["status"] == "succeeded"
    assert (await owner.run(p["id"]))["resolved_by"] == g["id"]  # a grandchild resolves the root
    assert (await owner.run(c1["id"]))["resolved_by"] == g["id"]
    assert g["resolved_by"] is None
    assert await needs_attention(owner, project) == []
    lineage = {n["id"]: n for n in (await owner.get(f"/runs/{p['id']}/lineage")).json()["runs"]}
    assert lineage[p["id"]]["resolved_by"] == lineage[c1["id"]]["resolved_by"] == g["id"]
    # A second approval of the root, or another resume of the failed child: refused, nothing runs.
    assert problem(await owner.resume(p["id"], "review"), 409)["resolved_by"] == g["id"]
    assert problem(await owner.resume(c1["id"], "charge"), 409)["resolved_by"] == g["id"]

    cancelled_flow = chain(node("start", "webhook"), node("review", "pause"),
                           node("wait", "delay", {"seconds": 60}), node("after", "transform", {"expression": "`1`"}))
    wf2 = await owner.workflow(project, cancelled_flow)
    q = await owner.wait(await owner.start(wf2["id"]))
    child = (await owner.resume(q["id"], "review")).json()
    assert await needs_attention(owner, project) == []  # its child is in flight: nothing to do yet
    await owner.wait(child["id"], statuses=("running",))
    assert (await owner.post(f"/runs/{child['id']}/cancel")).status_code == 202
    cancelled = await owner.wait(child["id"], statuses=("cancelled",))
    assert cancelled["resolved_by"] is None and (await owner.run(q["id"]))["resolved_by"] is None
    assert await needs_attention(owner, project) == [child["id"], q["id"]]  # newest first

    # Keyset pagination walks the same list one by one.
    seen, cursor = [], None
    while True:
        params = {"project_id": project, "unresolved": "true", "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await owner.get("/runs", params=params)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [child["id"], q["id"]]


async def test_a_failed_child_of_a_resolved_parent_is_resolved_too(owner, world):
    """Two approvals in a row: the first child fails, the second succeeds. The failed first child must not
    be resumable any more: that would charge a second time."""
    gate = f"fc-{uuid.uuid4().hex[:6]}"
    project = await owner.project()
    d = chain(node("start", "webhook"), node("review", "pause"), node("ship", "http_call", gate_call(world, gate)))
    wf = await owner.workflow(project, d)
    p = await owner.wait(await owner.start(wf["id"]))
    c1 = await owner.wait((await owner.resume(p["id"], "review")).json()["id"])
    assert c1["status"] == "failed"
    world.open(gate)
    c2 = await owner.wait((await owner.resume(p["id"], "review")).json()["id"])
    assert c2["status"] == "succeeded"
    assert (await owner.run(c1["id"]))["resolved_by"] == c2["id"]
    assert problem(await owner.resume(c1["id"], "ship"), 409)["resolved_by"] == c2["id"]
    assert len(world.seen(gate)) == 2
    assert await needs_attention(owner, project) == []


async def test_a_failed_rerun_of_a_succeeded_run_needs_attention(owner, world):
    name = f"seq-{uuid.uuid4().hex[:6]}"
    project = await owner.project()
    call = {"method": "GET", "url": f"{world.url}/seq/{name}?codes=200,500", "retry": {"max_attempts": 1}}
    wf = await owner.workflow(project, chain(node("start", "webhook"), node("call", "http_call", call)))
    ok = await owner.wait(await owner.start(wf["id"]))
    assert ok["status"] == "succeeded" and ok["resolved_by"] is None
    rr = await owner.wait((await owner.resume(ok["id"], "call", rerun=True)).json()["id"])
    assert rr["status"] == "failed" and rr["resolved_by"] is None
    assert await needs_attention(owner, project) == [rr["id"]]


# ---------------------------------------------------------------- §10.2 re-run
async def test_a_rerun_calls_exactly_the_rerun_steps(owner, world, db):
    a, b, c = (f"{x}-{uuid.uuid4().hex[:6]}" for x in "abc")
    project = await owner.project()
    d = {"nodes": [node("start", "webhook"), node("a", "http_call", ok_call(world, a)),
                   node("b", "http_call", ok_call(world, b)), node("c", "http_call", ok_call(world, c)),
                   node("sum", "transform", {"expression": "[steps.b.status, steps.c.status]"})],
         "edges": [{"source": "start", "target": "a"}, {"source": "a", "target": "b"}, {"source": "a", "target": "c"},
                   {"source": "b", "target": "sum"}, {"source": "c", "target": "sum"}]}
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "succeeded"
    assert run["eligible_steps"] == [] and run["rerunnable_steps"] == ["start", "a", "b", "c", "sum"]

    refused = problem(await owner.resume(run["id"], "b"), 409)
    assert refused["eligible_steps"] == [] and "rerun" in refused["detail"]
    plan = (await owner.post(f"/runs/{run['id']}/resume-plan", {"from_step": "b", "rerun": True})).json()
    assert plan == {"from_step": "b", "reuse": ["start", "a", "c"], "rerun": ["b", "sum"], "override": [],
                    "eligible_steps": [], "rerunnable_steps": ["start", "a", "b", "c", "sum"]}

    r = await owner.resume(run["id"], "b", rerun=True, reason="b's answer was wrong")
    assert r.status_code == 202, r.text
    assert r.json()["rerun"] is True
    done = await owner.wait(r.json()["id"])
    assert done["status"] == "succeeded"
    s = steps_by_key(done)
    assert [k for k in ("start", "a", "b", "c", "sum") if s[k]["reused_from"]] == ["start", "a", "c"]
    assert (len(world.seen(a)), len(world.seen(b)), len(world.seen(c))) == (1, 2, 1)
    assert world.seen(b)[1]["idempotency_key"] == f"{done['id']}:b"
    rows = await audit_rows(db, run["id"])
    assert rows[-1]["outcome"] == "accepted" and rows[-1]["detail"]["rerun_requested"] is True


async def test_rerun_of_a_run_in_flight_is_refused(owner, world, db):
    project = await owner.project()
    wf = await owner.workflow(project, chain(node("start", "webhook"), node("wait", "delay", {"seconds": 60})))
    run = await owner.wait(await owner.start(wf["id"]), statuses=("running",))
    body = problem(await owner.resume(run["id"], "start", rerun=True), 409)
    assert "the run is running" in body["detail"] and body["rerunnable_steps"] == []
    assert (await owner.post(f"/runs/{run['id']}/cancel")).status_code == 202
    rows = await audit_rows(db, run["id"])
    assert [(x["outcome"], x["status_code"]) for x in rows] == [("rejected", 409)]


# ---------------------------------------------------------------- §10.2 manual outputs
async def test_a_manual_output_is_never_sent_upstream_and_downstream_receives_it(owner, make_client, world, db):
    gate, notify = f"pay-{uuid.uuid4().hex[:6]}", f"notify-{uuid.uuid4().hex[:6]}"
    project = await owner.project()
    d = chain(node("start", "webhook"), node("charge", "http_call", gate_call(world, gate)),
              node("notify", "http_call", ok_call(world, notify, {"paid": "{{ steps.charge.body }}"})),
              node("summary", "transform", {"expression": "{ref: steps.charge.body.ref, told: steps.notify.status}"}))
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed" and len(world.seen(gate)) == 1
    manual = {"status": 200, "body": {"paid": True, "ref": "PHONE-77"}}

    plan = await owner.post(f"/runs/{run['id']}/resume-plan", {"from_step": "charge", "outputs": {"charge": manual}})
    assert plan.status_code == 200, plan.text
    assert plan.json() | {"rerunnable_steps": None} == {
        "from_step": "charge", "reuse": ["start"], "rerun": ["notify", "summary"], "override": ["charge"],
        "eligible_steps": ["charge"], "rerunnable_steps": None}

    editor = make_client()
    await owner.add_member(project, editor, "editor")
    r = await editor.resume(run["id"], "charge", outputs={"charge": manual}, reason="paid by phone")
    assert r.status_code == 202, r.text
    accepted = steps_by_key(r.json())
    assert accepted["charge"]["status"] == "succeeded" and accepted["charge"]["output"] == manual
    assert accepted["charge"]["override"]["by"] == editor.user_id
    assert accepted["charge"]["override"]["reason"] == "paid by phone" and accepted["charge"]["override"]["at"]
    assert accepted["charge"]["reused_from"] is None and accepted["notify"]["status"] == "pending"

    done = await owner.wait(r.json()["id"])
    assert done["status"] == "succeeded"
    assert len(world.seen(gate)) == 1  # the upstream of the overridden step never saw the resume
    assert [q["body"] for q in world.seen(notify)] == [{"paid": manual["body"]}]
    assert steps_by_key(done)["summary"]["output"] == {"ref": "PHONE-77", "told": 200}
    step = (await owner.get(f"/runs/{done['id']}/steps/charge")).json()
    assert step["override"]["by"] == editor.user_id and step["attempt"] == 0 and step["attempts"] == []
    assert step["output"] == manual and step["reused_from"] is None
    assert (await owner.run(run["id"]))["resolved_by"] == done["id"]

    events = (await owner.get(f"/runs/{done['id']}/events")).json()["items"]
    resumed = next(e for e in events if e["type"] == "run_resumed")["payload"]
    assert resumed["override"] == ["charge"] and resumed["rerun"] == ["notify", "summary"]
    assert not any(e["type"] == "step_started" and e["step_key"] == "charge" for e in events)
    row = (await audit_rows(db, run["id"]))[-1]
    digest = hashlib.sha256(orjson.dumps(manual, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert row["outcome"] == "accepted" and row["detail"]["override_sha256"] == {"charge": digest}
    assert "PHONE-77" not in orjson.dumps(dict(row), default=str).decode()


async def test_a_manual_output_of_a_later_step_reaches_its_descendants(owner, world):
    """Resume from the failed call, but give the output of a step further down by hand."""
    gate, after = f"mid-{uuid.uuid4().hex[:6]}", f"after-{uuid.uuid4().hex[:6]}"
    d = chain(node("start", "webhook"), node("call", "http_call", gate_call(world, gate)),
              node("price", "http_call", ok_call(world, after)),
              node("out", "transform", {"expression": "steps.price"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    world.open(gate)
    price = [41.5, {"currency": "EUR", "tiers": []}]  # a list: stored as one JSON value, not an array of them
    r = await owner.resume(run["id"], "call", outputs={"price": price})
    assert r.status_code == 202, r.text
    done = await owner.wait(r.json()["id"])
    assert done["status"] == "succeeded" and steps_by_key(done)["out"]["output"] == price
    assert len(world.seen(gate)) == 2 and world.seen(after) == []


async def test_bad_outputs_and_flags_are_clear_problems(owner, world, db):
    gate = f"bad-{uuid.uuid4().hex[:6]}"
    d = chain(node("start", "webhook"), node("call", "http_call", gate_call(world, gate)),
              node("next", "transform", {"expression": "`1`"}))
    project = await owner.project()
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    rid = run["id"]

    reused = problem(await owner.resume(rid, "call", outputs={"start": {"x": 1}}), 422)
    assert reused["errors"][0]["loc"] == ["body", "outputs", "start"] and "'start'" in reused["detail"]
    assert "reused" in reused["errors"][0]["msg"] and reused["rerun"] == ["call", "next"]
    unknown = problem(await owner.resume(rid, "call", outputs={"call": 1, "nope": 2}), 422)
    assert [e["loc"] for e in unknown["errors"]] == [["body", "outputs", "nope"]]
    big = problem(await owner.resume(rid, "call", outputs={"call": {"blob": "x" * 300_000}}), 413)
    assert big["errors"][0]["loc"] == ["body", "outputs", "call"] and "262144" in big["detail"]
    for bad in ({"outputs": []}, {"outputs": {"call": "a\u0000b"}}, {"outputs": {"": 1}}, {"rerun": "yes"}):
        r = await owner.post(f"/runs/{rid}/resume", {"from_step": "call", **bad})
        problem(r, 422)
    # The preview answers the same.
    assert (await owner.post(f"/runs/{rid}/resume-plan", {"from_step": "call", "outputs": {"start": 1}})).status_code == 422
    assert (await owner.post(f"/runs/{rid}/resume-plan", {"from_step": "call", "outputs": {"call": "x" * 300_000}})
            ).status_code == 413
    assert (await owner.post(f"/runs/{rid}/resume-plan", content=b"[1]",
                             headers={"content-type": "application/json"})).status_code == 422

    rows = await audit_rows(db, rid)
    assert [(x["outcome"], x["status_code"]) for x in rows] == [("rejected", 422), ("rejected", 422),
                                                                  ("rejected", 413)] + [("rejected", 422)] * 4
    assert "xxxxxxxx" not in orjson.dumps([dict(x) for x in rows], default=str).decode()
    assert (await owner.run(rid))["resumed_runs"] == [] and world.seen(gate)[1:] == []


# ---------------------------------------------------------------- races
async def test_two_approvals_at_once_start_exactly_one_run(owner, make_client, world, db):
    project, _, run, charge = await paused_order(owner, world)
    other = make_client()
    await owner.add_member(project, other, "editor")
    results = await asyncio.gather(*[(owner if i % 2 else other).resume(run["id"], "review", reason=f"ok {i}")
                                     for i in range(12)])
    assert sorted(r.status_code for r in results) == [202] + [409] * 11
    winner = next(r for r in results if r.status_code == 202).json()["id"]
    for r in results:
        if r.status_code == 409:
            body = r.json()
            assert winner in (body.get("active_run_id"), body.get("resolved_by")), body
    assert (await owner.wait(winner))["status"] == "succeeded"
    assert len(world.seen(charge)) == 1
    rows = await audit_rows(db, run["id"])
    assert len(rows) == 12 and sum(x["outcome"] == "accepted" for x in rows) == 1


async def test_an_approval_during_a_concurrent_resume_of_the_lineage(owner, world, db):
    """The root is paused and its approved child failed at the charge. Approving the root again and resuming
    the failed child at the same time would both charge: exactly one is accepted."""
    gate = f"lin-{uuid.uuid4().hex[:6]}"
    project = await owner.project()
    d = chain(node("start", "webhook"), node("review", "pause"), node("charge", "http_call", gate_call(world, gate)),
              node("after", "transform", {"expression": "`1`"}))
    wf = await owner.workflow(project, d)
    p = await owner.wait(await owner.start(wf["id"]))
    c1 = await owner.wait((await owner.resume(p["id"], "review")).json()["id"])
    assert c1["status"] == "failed"
    world.open(gate)
    calls = []
    for i in range(10):
        calls.append(owner.resume(p["id"], "review") if i % 2 else owner.resume(c1["id"], "charge"))
    results = await asyncio.gather(*calls)
    codes = sorted(r.status_code for r in results)
    assert codes == [202] + [409] * 9, codes
    winner = next(r for r in results if r.status_code == 202).json()["id"]
    assert (await owner.wait(winner))["status"] == "succeeded"
    assert [q["status"] for q in world.seen(gate)] == [500, 200]  # one charge after the failure, not two
    async with db.acquire() as c:
        n = await c.fetchval("select count(*) from runs where root_run_id = $1", uuid.UUID(p["id"]))
    assert n == 3


async def test_a_secret_typed_into_a_manual_output_is_not_stored(owner, world):
    gate = f"sec-{uuid.uuid4().hex[:6]}"
    secret = f"sk_live_{uuid.uuid4().hex}"
    project = await owner.project()
    assert (await owner.put(f"/projects/{project}/secrets/API_KEY", {"value": secret})).status_code == 204
    d = chain(node("start", "webhook"), node("call", "http_call", gate_call(world, gate)),
              node("echo", "transform", {"expression": "steps.call"}))
    wf = await owner.workflow(project, d)
    run = await owner.wait(await owner.start(wf["id"]))
    r = await owner.resume(run["id"], "call", outputs={"call": {"note": f"paid with {secret}"}}, reason="by hand")
    assert r.status_code == 202, r.text
    done = await owner.wait(r.json()["id"])
    assert steps_by_key(done)["echo"]["output"] == {"note": "paid with ***"}
    assert secret not in r.text and secret not in (await owner.get(f"/runs/{done['id']}")).text
