"""A first user story end to end: project → workflow → run → steps visible."""
from tests.conftest import linear, steps_by_key


async def test_a_linear_transform_run_succeeds(owner):
    project = await owner.project()
    wf = await owner.workflow(project, linear(("start", "webhook", {}),
                                              ("double", "transform", {"expression": "input.n"}),
                                              ("wrap", "transform", {"expression": "{v: steps.double}"})))
    run_id = await owner.start(wf["id"], {"n": 21})
    run = await owner.wait(run_id)
    assert run["status"] == "succeeded"
    steps = steps_by_key(run)
    assert steps["wrap"]["output"] == {"v": 21}
    assert [s["key"] for s in run["steps"]] == ["start", "double", "wrap"]
