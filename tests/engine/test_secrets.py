"""A project secret used in an http_call header reaches the outside world, and its value
appears nowhere afterwards: no table row, no event, no API response, no log line."""
from __future__ import annotations

import uuid

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import FAST_RETRY, uniq


async def test_secret_reaches_the_world_and_is_never_stored_shown_or_logged(owner, make_client, world, db, service):
    project = await owner.project()
    value = f"tok_{uuid.uuid4().hex}"
    r = await owner.put(f"/projects/{project}/secrets/TOKEN", {"value": value})
    assert r.status_code == 204, r.text
    assert r.content == b""

    viewer = make_client()
    await owner.add_member(project, viewer, "viewer")
    r = await viewer.put(f"/projects/{project}/secrets/TOKEN", {"value": "viewer-cannot"})
    assert r.status_code == 403
    outsider = make_client()
    r = await outsider.put(f"/projects/{project}/secrets/TOKEN", {"value": "outsider-cannot"})
    assert r.status_code == 404

    echo, flaky = uniq("echo"), uniq("flaky")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"method": "POST", "url": f"{world.url}/ok/{echo}",
                               "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
                               "body": {"token": "{{ secrets.TOKEN }}", "note": "t={{ secrets.TOKEN }}"}}),
        ("retry", "http_call", {"url": world.url + "/flaky/" + flaky + "?fail=1&t={{ secrets.TOKEN }}",
                                "retry": FAST_RETRY}),
        ("copy", "transform", {"expression": "steps.call.body"}),
        ("fail", "http_call", {"url": f"{world.url}/status/400/{uniq('bad')}",
                               "headers": {"X-Key": "{{ secrets.TOKEN }}"}})))
    run_id = await owner.start(wf["id"])
    run = await owner.wait(run_id)
    assert run["status"] == "failed"  # the last step answers 400 by design
    steps = steps_by_key(run)
    assert [steps[k]["status"] for k in ("call", "retry", "copy", "fail")] == ["succeeded"] * 3 + ["failed"]

    # The outside world received the real value.
    (req,) = world.seen(echo)
    assert req["headers"]["authorization"] == f"Bearer {value}"
    assert req["body"] == {"token": value, "note": f"t={value}"}
    assert all(r["query"]["t"] == value for r in world.seen(flaky))

    # Stored and shown redacted.
    assert steps["call"]["input"]["headers"]["Authorization"] == "Bearer ***"
    assert steps["call"]["output"]["body"]["headers"]["authorization"] == "Bearer ***"
    assert steps["copy"]["output"]["headers"]["authorization"] == "Bearer ***"

    # Not in any API response.
    texts = [(await owner.get(f"/runs/{run_id}")).text, (await owner.get(f"/runs/{run_id}/events")).text,
             (await owner.get(f"/runs/{run_id}/lineage")).text, (await owner.get(f"/workflows/{wf['id']}")).text,
             (await owner.get(f"/runs?project_id={project}")).text]
    for key in ("call", "retry", "copy", "fail"):
        texts.append((await owner.get(f"/runs/{run_id}/steps/{key}")).text)
    for text in texts:
        assert value not in text

    # Not in any row of any table.
    tables = await db.fetch("select schemaname, tablename from pg_tables"
                            " where schemaname not in ('pg_catalog', 'information_schema')")
    assert any(t["tablename"] == "step_runs" for t in tables)
    for t in tables:
        hits = await db.fetchval(
            f'select count(*) from "{t["schemaname"]}"."{t["tablename"]}" x where x::text like $1', f"%{value}%")
        assert hits == 0, f"the secret value is stored in {t['schemaname']}.{t['tablename']}"

    # Not in the service log (which did record this project's requests).
    log = service.log.read_text(errors="replace")
    assert f"/projects/{project}/secrets/TOKEN" in log
    assert value not in log


async def test_a_missing_secret_fails_the_step_before_anything_is_sent(owner, world):
    project = await owner.project()
    name = uniq("nosecret")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/ok/{name}",
                               "headers": {"Authorization": "Bearer {{ secrets.NOT_SET }}"}})))
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed"
    call = steps_by_key(run)["call"]
    assert call["error"]["type"] == "secret_missing" and "NOT_SET" in call["error"]["message"]
    assert world.seen(name) == []


async def test_a_template_error_quoting_a_secret_is_redacted(owner, db):
    project = await owner.project()
    value = f"tok_{uuid.uuid4().hex}"
    assert (await owner.put(f"/projects/{project}/secrets/TOKEN", {"value": value})).status_code == 204
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": "http://127.0.0.1:9/", "headers": {"X": "{{ abs(secrets.TOKEN) }}"}})))
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "failed"
    call = steps_by_key(run)["call"]
    assert call["error"]["type"] == "template_error"
    assert value not in (await owner.get(f"/runs/{run['id']}")).text
    assert value not in (await owner.get(f"/runs/{run['id']}/events")).text
    assert await db.fetchval("select count(*) from step_runs s where s.run_id = $1 and s::text like $2",
                             uuid.UUID(run["id"]), f"%{value}%") == 0
