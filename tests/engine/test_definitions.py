"""Definitions are validated on write (every problem listed with its node and field),
the editor's camelCase alias is accepted, and versions are immutable and numbered."""
from __future__ import annotations

from tests.conftest import linear, steps_by_key
from tests.engine.conftest import edge, node, uniq


async def _create(client, project, definition):
    return await client.post(f"/projects/{project}/workflows",
                             {"slug": uniq("wf"), "name": "wf", "definition": definition})


async def test_a_bad_definition_lists_every_problem(owner):
    project = await owner.project()
    definition = {
        "nodes": [node("start", "webhook"),
                  node("mystery", "teleport"),
                  node("call", "http_call", {"method": "GET"}),
                  node("calc", "transform", {"expression": "foo[?"}),
                  node("x", "transform", {"expression": "`1`"}),
                  node("y", "transform", {"expression": "`2`"}),
                  node("gate", "branch", {"condition": "input.ok"}),
                  node("after", "transform", {"expression": "`3`"})],
        "edges": [edge("start", "x"), edge("x", "y"), edge("y", "x"),
                  edge("start", "ghost"),
                  edge("start", "gate"), edge("gate", "after")],
    }
    r = await _create(owner, project, definition)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]

    def find(pred):
        return [e for e in errors if pred(e)]

    assert find(lambda e: e.get("node") == "mystery" and e.get("field") == "type" and "teleport" in e["msg"])
    assert find(lambda e: e.get("node") == "call" and e.get("field") == "url")
    assert find(lambda e: e.get("node") == "calc" and e.get("field") == "expression" and "JMESPath" in e["msg"])
    cycle = find(lambda e: "cycle" in e["msg"])
    assert cycle and "x" in cycle[0]["msg"] and "y" in cycle[0]["msg"]
    assert find(lambda e: e.get("field") == "target" and "ghost" in e["msg"] and e["loc"][-2:] == [3, "target"])
    assert find(lambda e: e.get("node") == "gate" and e.get("field") == "sourceHandle")
    assert len(errors) == 6, errors
    # Nothing was written.
    r = await owner.get(f"/runs?project_id={project}")
    assert r.status_code == 200


async def test_more_config_shapes_are_checked(owner):
    project = await owner.project()
    definition = {"nodes": [node("a", "http_call", {"url": "ftp://x", "timeout_s": 0, "retry": {"max_attempts": 0},
                                                     "bogus": 1}),
                            node("b", "delay", {}), node("c", "terminate", {"status": "maybe"}),
                            node("d", "http_call", {"url": "https://x/{{ input.[ }}"}),
                            node("a", "transform", {"expression": "`1`"})],
                  "edges": "nope"}
    r = await _create(owner, project, definition)
    assert r.status_code == 422
    got = {(e.get("node"), e.get("field")) for e in r.json()["errors"]}
    assert {("a", "url"), ("a", "timeout_s"), ("a", "retry"), ("a", "bogus"), ("b", "seconds"), ("c", "status"),
            ("d", "url"), ("a", "id"), (None, None)} <= got, got


async def test_non_object_definitions_are_422_not_500(owner):
    project = await owner.project()
    for bad in ([], "x", {"nodes": "x"}, {"nodes": [1, None]}, {"nodes": [{"id": "a", "data": []}]}):
        r = await _create(owner, project, bad)
        assert r.status_code == 422, (bad, r.status_code, r.text)


async def test_the_editor_alias_http_call_and_top_level_type_are_accepted(owner, world):
    project = await owner.project()
    name = uniq("alias")
    definition = {"nodes": [{"id": "start", "type": "webhook", "data": {}},
                            {"id": "call", "data": {"type": "httpCall", "config": {"url": f"{world.url}/ok/{name}"}}}],
                  "edges": [edge("start", "call")]}
    wf = await owner.workflow(project, definition)
    run = await owner.wait(await owner.start(wf["id"]))
    assert run["status"] == "succeeded"
    assert steps_by_key(run)["call"]["type"] == "http_call"
    assert len(world.seen(name)) == 1


async def test_versions_are_numbered_and_old_versions_still_run(owner, make_client):
    project = await owner.project()
    v1 = linear(("start", "webhook", {}), ("t", "transform", {"expression": "'one'"}))
    wf = await owner.workflow(project, v1)
    assert wf["version"] == 1
    for n in (2, 3):
        r = await owner.post(f"/workflows/{wf['id']}/versions",
                             {"definition": linear(("start", "webhook", {}),
                                                   ("t", "transform", {"expression": f"'v{n}'"}))})
        assert r.status_code == 201, r.text
        assert r.json()["version"] == n
    r = await owner.post(f"/workflows/{wf['id']}/versions", {"definition": {"nodes": []}})
    assert r.status_code == 422
    r = await owner.get(f"/workflows/{wf['id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == 3
    assert body["definition"]["nodes"][1]["data"]["config"]["expression"] == "'v3'"

    latest = await owner.wait(await owner.start(wf["id"]))
    old = await owner.wait(await owner.start(wf["id"], version=1))
    assert (latest["workflow_version"], steps_by_key(latest)["t"]["output"]) == (3, "v3")
    assert (old["workflow_version"], steps_by_key(old)["t"]["output"]) == (1, "one")
    r = await owner.post(f"/workflows/{wf['id']}/runs", {"input": {}, "version": 9})
    assert r.status_code == 422

    viewer = make_client()
    await owner.add_member(project, viewer, "viewer")
    r = await viewer.post(f"/workflows/{wf['id']}/versions", {"definition": v1})
    assert r.status_code == 403
    r = await viewer.get(f"/workflows/{wf['id']}")
    assert r.status_code == 200 and r.json()["version"] == 3
