from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "succeeded", "failed", "paused", "skipped", "cancelled"]


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"input": {"amount": 42}}})
    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, le=2_147_483_647)


class StepRead(BaseModel):
    key: str
    type: str
    status: StepStatus
    attempt: int
    input: Any = None
    output: Any = None
    output_truncated: bool = False
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reused_from: uuid.UUID | None = None
    eligible_for_resume: bool = False


class StepDetail(StepRead):
    attempts: list[dict[str, Any]] = Field(default_factory=list)


class RunRead(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    status: RunStatus
    trigger: Literal["api", "webhook", "resume"]
    input: Any = None
    error: dict[str, Any] | None = None
    parent_run_id: uuid.UUID | None = None
    root_run_id: uuid.UUID | None = None
    resumed_from_step: str | None = None
    created_by: uuid.UUID | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunDetail(RunRead):
    steps: list[StepRead]
    resumed_runs: list[uuid.UUID]
    eligible_steps: list[str] = Field(default_factory=list)


class RunList(BaseModel):
    items: list[RunRead]
    next_cursor: str | None = None


class LineageNode(BaseModel):
    id: uuid.UUID
    parent_run_id: uuid.UUID | None
    status: RunStatus
    trigger: str
    resumed_from_step: str | None
    created_at: datetime
    finished_at: datetime | None
    children: list[uuid.UUID]


class Lineage(BaseModel):
    root_run_id: uuid.UUID
    runs: list[LineageNode]


class EventRead(BaseModel):
    id: int
    run_id: uuid.UUID
    type: str
    step_key: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class EventList(BaseModel):
    items: list[EventRead]
    next_cursor: str | None = None


class HookAccepted(BaseModel):
    run_id: uuid.UUID
    duplicate: bool = False
