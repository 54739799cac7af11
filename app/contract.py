"""The finishing touches of the published OpenAPI document: what FastAPI cannot say from the routes
alone (public endpoints, `Location` headers, descriptions, the rules every JSON body follows), so that
third-party generators and linters (openapi-python-client, openapi-typescript, Redocly, Spectral)
accept it as it is."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

BODY_RULES = """
**Request bodies** are JSON: `Content-Type: application/json` (or `application/*+json`); a body
without it or with another media type → 415. Every JSON body, on every
endpoint, follows the same rules, each refused with a 422 problem naming the place:
no byte order mark, no duplicate keys in an object, integers within the signed/unsigned 64-bit
range (−2⁶³ … 2⁶⁴−1; nothing is ever rounded to a float), finite numbers only, no NUL character
and no unpaired surrogate in any string or key (PostgreSQL cannot store them), at most 64 levels
of nesting. A field typed `integer` takes an integer literal: `1`, not `1.0` or `"1"`.

**Paths and methods.** Ids in paths are UUIDs in the standard 8-4-4-4-12 form (other spellings
→ 422). `HEAD` works wherever `GET` does. A path with a trailing slash is a 404 (no redirect)."""

# One line or two for each operation, shown by documentation tools under the summary.
DESCRIPTIONS = {
    "projects-create": "Any authenticated user may create a project; the caller becomes its `owner`.",
    "projects-list": "Only the projects the caller is a member of, with the caller's role in each.",
    "projects-members-add": "Owners add a user by id with a role (`owner`, `editor` or `viewer`); adding an "
    "existing member changes their role.",
    "projects-members-list": "Every member of the project with their role; visible to any member.",
    "projects-secrets-put": "Editors and owners store a value (encrypted with AES-256-GCM at rest) that steps use as "
    "`{{ secrets.NAME }}`. It is never returned, logged or stored in step data.",
    "workflows-create": "Validates the definition (422 lists every problem) and stores it as version 1. The "
    "response carries `webhook_secret`, shown only this once.",
    "workflows-versions-create": "Validates the definition and stores it as the next immutable version; new runs use "
    "it, existing runs keep theirs. The response is `{workflow_id, version, created_at}`.",
    "workflows-get": "The workflow with its latest version number and that version's definition.",
    "runs-start": "Queues a run of the latest version (or `version`) with `input` as its input; `Location` names "
    "the new run. The engine picks it up at once.",
    "runs-list": "Newest first. Filters combine; `next_cursor` continues the same query (a cursor is bound to the "
    "filters it came from, so using it with other filters → 422).",
    "runs-get": "The run, every step with `eligible_for_resume`, the steps one can resume from, and the ids of the "
    "runs resumed from this one.",
    "runs-step-get": "One step with its full stored output and every attempt (status, times, error, retry wait).",
    "runs-lineage": "Every run of the resume tree this run belongs to, from the root, with each run's children.",
    "runs-cancel": "In-flight steps finish or are aborted; no new step starts; the run ends `cancelled`. "
    "`Location` names the run.",
    "runs-pause": "In-flight steps finish; no new step starts; the run ends `paused` and can be resumed. "
    "`Location` names the run.",
    "audit-list": "Every resume attempt (accepted, denied or rejected) and other audited actions, newest first. "
    "Owners only.",
    "health-live": "Answers 200 while the process runs; it does not touch the database.",
    "health-ready": "Answers 200 when the database answers, else 503 with `Retry-After`.",
    "health-metrics": "Prometheus text format: request counts, run and step outcomes, pool and worker gauges.",
}

# Operations that answer with `Location`, and what it names.
LOCATIONS = {
    "runs-start": "`/runs/{id}` of the new run",
    "runs-resume": "`/runs/{id}` of the new (resumed) run",
    "runs-cancel": "`/runs/{run_id}`",
    "runs-pause": "`/runs/{run_id}`",
    "hooks-deliver": "`/runs/{run_id}` of the run the delivery started",
    "workflows-create": "`/workflows/{id}` of the new workflow",
    "bulk-resumes-create": "`/bulk-resumes/{id}` of the new job (not on a dry run's 200)",
    "bulk-resumes-cancel": "`/bulk-resumes/{bulk_id}`",
}

PUBLIC_TAGS = {"health", "hooks"}  # no bearer token: open, or signed the Standard Webhooks way

SSE_DESCRIPTION = """A `text/event-stream` (Server-Sent Events). Each message is
`id: <event id>`, `event: <event type>` and `data: <the event as JSON, the EventRead schema>`;
a `: ping` comment is sent on idle streams. Reconnect with `Last-Event-ID` to continue after
the last event seen."""


def _drop_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, {type: null}]` → X. A header or query parameter is present or absent, never `null`."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o != {"type": "null"}]
        if len(rest) == 1 and len(rest) < len(options):
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            merged.update(rest[0])
            if merged.get("default", 0) is None:
                merged.pop("default")
            return merged
    return schema


def finish(
    schema: dict[str, Any], problem_ref: dict[str, Any], example_models: tuple[type[BaseModel], ...] = ()
) -> dict[str, Any]:
    """Complete FastAPI's document in place and return it. FastAPI drops every `null` from examples, which
    leaves them without required fields; the examples of `example_models` are put back as written."""
    components = schema.get("components", {}).get("schemas", {})
    for model in example_models:
        examples = model.model_json_schema().get("examples")
        if examples and model.__name__ in components:
            components[model.__name__]["examples"] = examples
    info = schema.setdefault("info", {})
    if BODY_RULES.strip() not in info.get("description", ""):
        info["description"] = info.get("description", "") + "\n" + BODY_RULES
    schema.setdefault("servers", [{"url": "http://127.0.0.1:8000", "description": "`meshhook serve` on this machine"}])
    client_error = {"description": "The request is malformed", "content": {"application/problem+json": problem_ref}}
    unsupported = {
        "description": "The body is not sent as JSON (`Content-Type` is missing or names another type)",
        "content": {"application/problem+json": problem_ref},
    }
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            op_id = op.get("operationId", "")
            if not op.get("description"):
                op["description"] = DESCRIPTIONS.get(op_id) or op.get("summary", "")
            if PUBLIC_TAGS & set(op.get("tags", [])):
                op["security"] = []
            for param in op.get("parameters", []):
                if param.get("in") in ("header", "query") and "schema" in param:
                    param["schema"] = _drop_null(param["schema"])
            responses = op.setdefault("responses", {})
            if "requestBody" in op:
                responses.setdefault("415", unsupported)
            if not any(code.startswith("4") for code in responses):
                responses["4XX"] = client_error
            if op_id in LOCATIONS:
                for code in ("201", "202"):
                    if code in responses:
                        responses[code].setdefault("headers", {})["Location"] = {
                            "description": LOCATIONS[op_id],
                            "schema": {"type": "string"},
                        }
            if op_id == "runs-events":
                sse = responses.get("200", {}).get("content", {}).get("text/event-stream")
                if sse is not None:
                    sse.clear()
                    sse.update(
                        {
                            "schema": {"type": "string", "description": SSE_DESCRIPTION},
                            "example": 'id: 41\nevent: step_succeeded\ndata: {"id": 41, "run_id": '
                            '"0b9c6b0e-5d7e-4f7c-9a52-3f1f0f2d9a11", "type": "step_succeeded", '
                            '"step_key": "charge", "payload": {}, "at": "2026-11-26T10:00:01Z"}\n\n',
                        }
                    )
            op["responses"] = dict(sorted(responses.items()))
    return schema
