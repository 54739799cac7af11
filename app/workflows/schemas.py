from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.storable import StorableObject, StorableText

EXAMPLE_DEFINITION = {
    "nodes": [
        {"id": "start", "data": {"type": "webhook"}},
        {"id": "charge", "data": {"type": "http_call", "config": {
            "method": "POST", "url": "https://api.example.com/charge",
            "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
            "body": {"amount": "{{ input.amount }}"}}}},
        {"id": "summary", "data": {"type": "transform", "config": {"expression": "{id: steps.charge.body.id}"}}},
    ],
    "edges": [{"source": "start", "target": "charge"}, {"source": "charge", "target": "summary"}],
}


class WorkflowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "slug": "charge-customer", "name": "Charge customer", "definition": EXAMPLE_DEFINITION}})
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,99}$")
    name: StorableText = Field(min_length=1, max_length=200)
    definition: StorableObject


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    definition: StorableObject


class WorkflowRead(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    slug: str
    name: str
    version: int = Field(description="The latest version number")
    latest_version: int
    definition: dict[str, Any]
    created_at: datetime
    webhook_url: str


class WorkflowCreated(WorkflowRead):
    webhook_secret: str = Field(description="HMAC-SHA256 signing secret for POST /hooks/{workflow_id}; shown only once")


class VersionRead(BaseModel):
    workflow_id: uuid.UUID
    version: int
    created_at: datetime
