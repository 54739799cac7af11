"""The OpenAPI spec describes every field of resolved runs, re-runs and manual outputs (DESIGN §10.1, §10.2)
with its type, so generated clients (openapi/examples) see them."""
from __future__ import annotations

import json

import pytest

from tests.support import ROOT


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((ROOT / "openapi" / "openapi.json").read_text())


def _nullable(prop: dict, typ: str, fmt: str | None = None) -> bool:
    options = prop.get("anyOf", [prop])
    return {"type": "null"} in options and any(o.get("type") == typ and o.get("format") == fmt for o in options)


def test_runs_show_resolved_by_rerun_and_rerunnable_steps(spec):
    s = spec["components"]["schemas"]
    for name in ("RunRead", "RunDetail"):
        props = s[name]["properties"]
        assert _nullable(props["resolved_by"], "string", "uuid"), props["resolved_by"]
        assert props["rerun"]["type"] == "boolean"
        assert {"resolved_by", "rerun"} <= set(s[name]["required"])
    detail = s["RunDetail"]
    assert detail["properties"]["rerunnable_steps"]["items"] == {"type": "string"}
    assert "rerunnable_steps" in detail["required"]
    assert _nullable(s["LineageNode"]["properties"]["resolved_by"], "string", "uuid")


def test_steps_show_who_set_an_output_by_hand(spec):
    s = spec["components"]["schemas"]
    override = s["StepRead"]["properties"]["override"]
    assert {"$ref": "#/components/schemas/StepOverride"} in override["anyOf"] and {"type": "null"} in override["anyOf"]
    assert "override" in s["StepRead"]["required"]
    so = s["StepOverride"]["properties"]
    assert so["by"]["format"] == "uuid" and so["at"]["format"] == "date-time"
    assert _nullable(so["reason"], "string")


def test_resume_and_its_preview_take_rerun_and_outputs(spec):
    s = spec["components"]["schemas"]
    req = s["ResumeRequest"]["properties"]
    assert req["rerun"]["type"] == "boolean" and req["rerun"]["default"] is False
    assert {"type": "object", "additionalProperties": True} in req["outputs"]["anyOf"] or any(
        o.get("type") == "object" for o in req["outputs"]["anyOf"])
    plan = s["ResumePlanRead"]
    assert set(plan["required"]) == {"from_step", "reuse", "rerun", "override", "eligible_steps", "rerunnable_steps"}
    assert plan["properties"]["override"]["items"] == {"type": "string"}
    post = spec["paths"]["/runs/{run_id}/resume-plan"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ResumeRequest"}
    assert {"200", "409", "413", "422"} <= set(post["responses"])
    assert "get" in spec["paths"]["/runs/{run_id}/resume-plan"]  # the query form stays
    problem = s["Problem"]["properties"]
    assert _nullable(problem["resolved_by"], "string")
    assert "413" in spec["paths"]["/runs/{run_id}/resume"]["post"]["responses"]


def test_the_run_list_filters_unresolved_runs(spec):
    params = {p["name"]: p for p in spec["paths"]["/runs"]["get"]["parameters"]}
    assert params["unresolved"]["schema"]["type"] == "boolean" and params["unresolved"]["schema"]["default"] is False
