"""The committed OpenAPI spec is the app's spec, and it keeps the contract's names and error shapes."""
from __future__ import annotations

import json
import re

import pytest

from app.main import create_app
from tests.support import ROOT

SPEC_PATH = ROOT / "openapi" / "openapi.json"
PATH_PARAMETERS = {"version", "project_id", "workflow_id", "run_id", "step_key", "name", "bulk_id"}
# DESIGN §6: every route, by operation id.
OPERATIONS = {
    ("get", "/healthz"): "health-live",
    ("get", "/readyz"): "health-ready",
    ("get", "/metrics"): "health-metrics",
    ("post", "/projects"): "projects-create",
    ("get", "/projects"): "projects-list",
    ("post", "/projects/{project_id}/members"): "projects-members-add",
    ("get", "/projects/{project_id}/members"): "projects-members-list",
    ("put", "/projects/{project_id}/secrets/{name}"): "projects-secrets-put",
    ("post", "/projects/{project_id}/workflows"): "workflows-create",
    ("post", "/workflows/{workflow_id}/versions"): "workflows-versions-create",
    ("get", "/workflows/{workflow_id}"): "workflows-get",
    ("get", "/workflows/{workflow_id}/versions/{version}"): "workflows-versions-get",  # the console draws a run's version
    ("post", "/workflows/{workflow_id}/runs"): "runs-start",
    ("post", "/hooks/{workflow_id}"): "hooks-deliver",
    ("get", "/runs"): "runs-list",
    ("get", "/runs/{run_id}"): "runs-get",
    ("get", "/runs/{run_id}/lineage"): "runs-lineage",
    ("get", "/runs/{run_id}/steps/{step_key}"): "runs-step-get",
    ("get", "/runs/{run_id}/events"): "runs-events",
    ("post", "/runs/{run_id}/cancel"): "runs-cancel",
    ("post", "/runs/{run_id}/pause"): "runs-pause",
    ("get", "/runs/{run_id}/resume-plan"): "runs-resume-plan",
    ("post", "/runs/{run_id}/resume-plan"): "runs-resume-plan-body",
    ("post", "/runs/{run_id}/resume"): "runs-resume",
    ("get", "/projects/{project_id}/audit"): "audit-list",
    ("post", "/projects/{project_id}/bulk-resumes"): "bulk-resumes-create",
    ("get", "/bulk-resumes/{bulk_id}"): "bulk-resumes-get",
    ("post", "/bulk-resumes/{bulk_id}/cancel"): "bulk-resumes-cancel",
    ("get", "/bulk-resumes/{bulk_id}/events"): "bulk-resumes-events",
}
PUBLIC = {"health-live", "health-ready", "health-metrics", "hooks-deliver"}
PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app().openapi()


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield method, path, op


def test_the_committed_spec_is_the_apps_spec(spec):
    committed = json.loads(SPEC_PATH.read_text())
    # Round-trip the app's spec through JSON so tuples, ints-as-keys etc. compare as they would be written.
    assert json.loads(json.dumps(spec)) == committed, (
        "openapi/openapi.json is out of date: run `meshhook openapi` (or `python -m app.cli openapi`) and commit it")


def test_every_contract_route_has_its_operation_id(spec):
    found = {(method, path): op.get("operationId") for method, path, op in operations(spec)}
    assert found == OPERATIONS
    for op_id in found.values():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", op_id), op_id


def test_path_parameters_use_the_contract_names(spec):
    for method, path, op in operations(spec):
        in_path = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == in_path, (method, path)
        assert in_path <= PATH_PARAMETERS, (method, path, in_path)


def test_every_operation_is_tagged_summarised_and_secured(spec):
    tags = {t["name"]: t for t in spec["tags"]}
    assert all(t.get("description") for t in tags.values())
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"]}
    for method, path, op in operations(spec):
        assert len(op["tags"]) == 1 and op["tags"][0] in tags, (method, path)
        assert op.get("summary"), (method, path)
        assert op.get("description"), (method, path)  # Spectral's operation-description
        if op["operationId"] in PUBLIC:
            assert op["security"] == [], (method, path)  # explicitly public (Redocly's security-defined)
        else:
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert "401" in op["responses"], (method, path)


def test_every_error_response_is_problem_json_with_the_shared_schema(spec):
    for method, path, op in operations(spec):
        for code, response in op["responses"].items():
            if code[0] in "45":
                assert response["content"] == PROBLEM_CONTENT, (method, path, code)
                assert response["description"], (method, path, code)
        if op["operationId"] not in ("health-live", "health-metrics"):
            assert "503" in op["responses"], (method, path)
        if op.get("parameters") or "requestBody" in op:
            assert "422" in op["responses"], (method, path)
        if "requestBody" in op:
            assert "413" in op["responses"], (method, path)
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance", "request_id"} <= set(problem["required"])
    assert {"errors", "eligible_steps", "active_run_id"} <= set(problem["properties"])


def test_resume_documents_its_body_and_conflicts(spec):
    op = spec["paths"]["/runs/{run_id}/resume"]["post"]
    body = op["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ResumeRequest"}
    assert body["examples"]
    schema = spec["components"]["schemas"]["ResumeRequest"]
    assert schema["required"] == ["from_step"]
    assert set(schema["properties"]) == {"from_step", "input", "workflow_version", "reason", "rerun", "outputs"}
    assert {"202", "403", "404", "409", "422"} <= set(op["responses"])
    assert op["responses"]["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RunDetail"}


def test_every_reference_resolves(spec):
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(spec)))
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])


def test_response_fields_the_server_always_sends_are_required(spec):
    schemas = spec["components"]["schemas"]
    run = schemas["RunDetail"]
    assert {"id", "status", "trigger", "input", "error", "parent_run_id", "root_run_id", "resumed_from_step",
            "created_by", "created_at", "started_at", "finished_at", "steps", "resumed_runs"} <= set(run["required"])
    step = schemas["StepRead"]
    assert {"key", "type", "status", "attempt", "input", "output", "error", "started_at", "finished_at",
            "reused_from", "eligible_for_resume"} <= set(step["required"])
    job = schemas["BulkResumeRead"]
    assert {"id", "project_id", "status", "matched", "accepted", "skipped", "rejected", "pending", "created_by",
            "created_at", "finished_at", "request", "items"} <= set(job["required"])
    assert {"run_id", "outcome", "new_run_id", "why"} <= set(schemas["BulkItem"]["required"])
    for name in ("RunList", "ProjectList", "MemberList", "EventList", "AuditList", "BulkEventList"):
        assert set(schemas[name]["required"]) == {"items", "next_cursor"}, name


def test_what_generators_need_is_declared(spec):
    """openapi-python-client makes one enum member per name and exposes only declared headers."""
    assert spec["servers"]
    definition = spec["components"]["schemas"]["WorkflowCreate"]["properties"]["definition"]
    node_type = definition["properties"]["nodes"]["items"]["properties"]["data"]["properties"]["type"]
    assert node_type["enum"] == ["webhook", "http_call", "transform", "branch", "delay", "pause", "terminate"]
    for method, path, op in operations(spec):
        for code in ("201", "202"):
            if code in op["responses"] and op["operationId"] not in (
                    "projects-create", "projects-members-add", "workflows-versions-create"):
                assert op["responses"][code]["headers"]["Location"]["schema"] == {"type": "string"}, (method, path)
        assert any(c.startswith("4") for c in op["responses"]), (method, path)
        for param in op.get("parameters", []):
            if param["in"] in ("header", "query"):
                assert "anyOf" not in param["schema"], (method, path, param["name"])  # never the string "null"
    schemas = spec["components"]["schemas"]
    attempts = schemas["StepDetail"]["properties"]["attempts"]
    assert attempts["items"] == {"$ref": "#/components/schemas/StepAttempt"}
    attempt = schemas["StepAttempt"]["properties"]
    assert attempt["started_at"]["format"] == "date-time" and "retry_in_s" in attempt
    assert schemas["LineageNode"]["properties"]["trigger"]["enum"] == ["api", "webhook", "resume"]
    sse = spec["paths"]["/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert "EventRead" in sse["schema"]["description"] and sse["example"].startswith("id: ")
