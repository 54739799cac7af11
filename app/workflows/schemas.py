from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.storable import StorableObject, StorableText
from app.workflows.definition import ALIASES, MAX_NODES, STEP_TYPES

EXAMPLE_DEFINITION: dict[str, Any] = {
    "nodes": [
        {"id": "start", "data": {"type": "webhook"}},
        {
            "id": "charge",
            "data": {
                "type": "http_call",
                "config": {
                    "method": "POST",
                    "url": "http://127.0.0.1:8080/charge",
                    "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
                    "body": {"amount": "{{ input.amount }}"},
                },
            },
        },
        {"id": "summary", "data": {"type": "transform", "config": {"expression": "{id: steps.charge.body.id}"}}},
    ],
    "edges": [{"source": "start", "target": "charge"}, {"source": "charge", "target": "summary"}],
}


# The documented shape of a definition. It describes what app.workflows.definition accepts (which
# also checks each type's config, the edges and cycles) and allows the editor's extra fields.
DEFINITION_SCHEMA: dict[str, Any] = {
    "title": "WorkflowDefinition",
    "type": "object",
    "required": ["nodes"],
    "additionalProperties": True,
    "description": "The editor's (xyflow) graph: each node is a step, each edge a dependency. Validated on "
    "write (422 lists every problem): unique ids, known types, config per type, edges between "
    "existing nodes, no cycles, templates that parse.",
    "properties": {
        "nodes": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_NODES,
            "items": {
                "type": "object",
                "required": ["id"],
                "additionalProperties": True,
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 100, "description": "The step key"},
                    "type": {"description": "The step type, when `data.type` is absent"},
                    "data": {
                        "type": "object",
                        "additionalProperties": True,
                        "properties": {
                            # Canonical names only (generators make one enum member per name); the editor's
                            # aliases (httpCall, http-call, httpcall) are still accepted.
                            "type": {
                                "type": "string",
                                "enum": list(STEP_TYPES),
                                "description": f"Aliases accepted as well: {', '.join(sorted(ALIASES))}",
                            },
                            "config": {
                                "anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}],
                                "description": "Per type: http_call {method, url, headers?, query?, body?, timeout_s?, "
                                "retry?}; transform {expression}; branch {condition}; delay "
                                "{seconds}; terminate {status, message?}; webhook and pause none",
                            },
                        },
                    },
                },
            },
        },
        "edges": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target"],
                "additionalProperties": True,
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "sourceHandle": {"description": '`"true"` or `"false"` on edges leaving a branch'},
                },
            },
        },
    },
}
Definition = Annotated[StorableObject, WithJsonSchema(DEFINITION_SCHEMA)]
DefinitionRead = Annotated[dict[str, Any], WithJsonSchema(DEFINITION_SCHEMA)]


class WorkflowCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"slug": "charge-customer", "name": "Charge customer", "definition": EXAMPLE_DEFINITION}]
        },
    )
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    name: StorableText = Field(min_length=1, max_length=200)
    definition: Definition


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"definition": EXAMPLE_DEFINITION}]})
    definition: Definition


class WorkflowRead(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    slug: str
    name: str
    version: int = Field(description="The version whose `definition` is shown (the latest unless one was asked for)")
    latest_version: int
    definition: DefinitionRead
    created_at: datetime
    webhook_url: str


class WorkflowCreated(WorkflowRead):
    webhook_secret: str = Field(description="HMAC-SHA256 signing secret for POST /hooks/{workflow_id}; shown only once")


class VersionRead(BaseModel):
    workflow_id: uuid.UUID
    version: int
    created_at: datetime
