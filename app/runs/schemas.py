from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.storable import StorableObject

RunStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["api", "webhook", "resume"]
StepStatus = Literal["pending", "running", "succeeded", "failed", "paused", "skipped", "cancelled"]
AttemptStatus = Literal[
    "pending", "running", "succeeded", "failed", "paused", "skipped", "cancelled", "retrying", "worker_lost"
]


class RunStart(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"input": {"amount": 42}}]})
    input: StorableObject = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, le=2_147_483_647, strict=True)


class StepOverride(BaseModel):
    """Who set a step's output by hand (`outputs` of a resume, DESIGN §10.2), when, and why."""

    by: uuid.UUID = Field(description="The user who resumed with this output")
    at: datetime
    reason: str | None = Field(default=None, description="The resume request's `reason`")


class StepRead(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
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
    override: StepOverride | None = Field(
        default=None,
        description="Set when the output was given by hand in a resume's `outputs`: the step was not "
        "executed (then `reused_from` is null)",
    )


class StepAttempt(BaseModel):
    """One attempt of a step: an http_call that is retried has one per try."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "attempt": 1,
                    "status": "retrying",
                    "started_at": "2026-11-26T10:00:00.015Z",
                    "finished_at": "2026-11-26T10:00:00.120Z",
                    "error": {"type": "http_error", "status": 503, "message": "HTTP 503"},
                    "retry_in_s": 1.07,
                }
            ]
        },
    )
    attempt: int = Field(description="1 for the first try")
    status: AttemptStatus | None = Field(
        default=None,
        description="How this attempt ended: as its step does, "
        "`retrying` when another attempt followed, `worker_lost` when the worker "
        "running it died",
    )
    started_at: datetime
    finished_at: datetime | None = None
    error: dict[str, Any] | None = None
    retry_in_s: float | None = Field(default=None, description="The wait before the next attempt, when one followed")


class StepDetail(StepRead):
    attempts: list[StepAttempt] = Field(default_factory=list)


class RunRead(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    id: uuid.UUID
    project_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    status: RunStatus
    trigger: RunTrigger
    input: Any = None
    error: dict[str, Any] | None = None
    parent_run_id: uuid.UUID | None = None
    root_run_id: uuid.UUID | None = None
    resumed_from_step: str | None = None
    created_by: uuid.UUID | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resolved_by: uuid.UUID | None = Field(
        default=None,
        description="A failed, paused or cancelled run whose work a later resumed run finished: that "
        "run's id (DESIGN §10.1; the rule is in docs/resume.md); else null",
    )
    rerun: bool = Field(default=False, description='Started by a resume with `"rerun": true`')


_RUN_EXAMPLE: dict[str, Any] = {
    "id": "0b9c6b0e-5d7e-4f7c-9a52-3f1f0f2d9a11",
    "project_id": "6f1c2f5e-1f7b-4c1e-8a0e-2b8f9d0c4e21",
    "workflow_id": "a3e5d7c9-2b4f-4e6a-8c0d-1f3e5a7c9b2d",
    "workflow_version": 1,
    "status": "failed",
    "trigger": "api",
    "input": {"amount": 42},
    "error": {"step": "charge", "type": "step_failed", "message": "step 'charge' failed", "failed_steps": ["charge"]},
    "parent_run_id": None,
    "root_run_id": "0b9c6b0e-5d7e-4f7c-9a52-3f1f0f2d9a11",
    "resumed_from_step": None,
    "created_by": "4d2e6f8a-0b1c-4d3e-9f5a-7b8c9d0e1f2a",
    "created_at": "2026-11-26T10:00:00Z",
    "started_at": "2026-11-26T10:00:00.010Z",
    "finished_at": "2026-11-26T10:00:03.200Z",
    "resolved_by": None,
    "rerun": False,
    "steps": [
        {
            "key": "start",
            "type": "webhook",
            "status": "succeeded",
            "attempt": 1,
            "input": {"amount": 42},
            "output": {"amount": 42},
            "output_truncated": False,
            "error": None,
            "started_at": "2026-11-26T10:00:00.012Z",
            "finished_at": "2026-11-26T10:00:00.013Z",
            "reused_from": None,
            "eligible_for_resume": False,
            "override": None,
        },
        {
            "key": "charge",
            "type": "http_call",
            "status": "failed",
            "attempt": 3,
            "input": {"method": "POST", "url": "http://127.0.0.1:8080/charge"},
            "output": None,
            "output_truncated": False,
            "error": {"type": "http_error", "status": 503, "message": "HTTP 503"},
            "started_at": "2026-11-26T10:00:00.015Z",
            "finished_at": "2026-11-26T10:00:03.190Z",
            "reused_from": None,
            "eligible_for_resume": True,
            "override": None,
        },
        {
            "key": "summary",
            "type": "transform",
            "status": "pending",
            "attempt": 0,
            "input": None,
            "output": None,
            "output_truncated": False,
            "error": None,
            "started_at": None,
            "finished_at": None,
            "reused_from": None,
            "eligible_for_resume": False,
            "override": None,
        },
    ],
    "resumed_runs": [],
    "eligible_steps": ["charge"],
    "rerunnable_steps": ["start", "charge"],
}


class RunDetail(RunRead):
    model_config = ConfigDict(json_schema_extra={"examples": [_RUN_EXAMPLE]})
    steps: list[StepRead]
    resumed_runs: list[uuid.UUID]
    eligible_steps: list[str] = Field(default_factory=list)
    rerunnable_steps: list[str] = Field(
        default_factory=list,
        description='Steps a resume with `"rerun": true` may start from (DESIGN §10.2): every '
        "step whose ancestors all succeeded or were skipped, when the run is "
        "succeeded, failed, cancelled or resolved",
    )


class RunList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    items: list[RunRead]
    next_cursor: str | None = None


class LineageNode(BaseModel):
    id: uuid.UUID
    parent_run_id: uuid.UUID | None
    status: RunStatus
    trigger: RunTrigger
    resumed_from_step: str | None
    created_at: datetime
    finished_at: datetime | None
    children: list[uuid.UUID]
    resolved_by: uuid.UUID | None = None
    rerun: bool = False


class Lineage(BaseModel):
    root_run_id: uuid.UUID
    runs: list[LineageNode]


class EventRead(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    id: int
    run_id: uuid.UUID
    type: str
    step_key: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class EventList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    items: list[EventRead]
    next_cursor: str | None = None


class HookAccepted(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    run_id: uuid.UUID
    duplicate: bool = False
