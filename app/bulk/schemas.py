"""Request and response shapes of bulk resume (DESIGN §10.3)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.storable import StorableText

MAX_MATCHED = 10_000
RunStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
JobStatus = Literal["running", "succeeded", "cancelled", "failed", "dry_run"]
Outcome = Literal["pending", "accepted", "skipped", "rejected"]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    # pydantic would also take Unix seconds or a naive time; the contract is an RFC 3339 date-time.
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-26T10:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


class BulkFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow_id: uuid.UUID = Field(description="Required: the workflow whose runs are matched")
    status: list[RunStatus] | None = Field(
        default=None,
        min_length=1,
        max_length=6,
        description="Run statuses to match; default `failed`, `paused` and `cancelled`",
    )
    failed_step: StorableText | None = Field(
        default=None, min_length=1, max_length=100, description="Only runs in which this step failed"
    )
    created_after: Timestamp | None = Field(default=None, description="Runs created after this time")
    created_before: Timestamp | None = Field(default=None, description="Runs created before this time")
    run_ids: list[uuid.UUID] | None = Field(
        default=None, min_length=1, max_length=MAX_MATCHED, description="Only these runs"
    )


class BulkResumeCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "filter": {
                        "workflow_id": "0b7e2a52-4a9e-4c53-9d4f-3f2b4a1c9e10",
                        "status": ["failed"],
                        "failed_step": "charge",
                        "created_after": "2026-12-01T09:00:00Z",
                    },
                    "reason": "payments API outage 09:00-10:00 is over",
                    "max_per_second": 50,
                },
            ]
        },
    )
    filter: BulkFilter
    from_step: StorableText | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The step to resume every run from; absent → each run's first eligible step",
    )
    workflow_version: Literal["original", "latest"] | Annotated[int, Field(ge=1, le=2_147_483_647, strict=True)] = (
        Field(default="original", description="`original` (each run's own version), `latest`, or a version number")
    )
    reason: StorableText = Field(min_length=1, max_length=500, description="Kept in every run's audit row")
    dry_run: bool = Field(default=False, description="Answer 200 with the matched runs and their plans; write nothing")
    max_per_second: int = Field(
        default=20, ge=1, le=1000, strict=True, description="Resumes per second, paced evenly (one every 1/rate s)"
    )


class PlanSummary(BaseModel):
    reuse: int
    rerun: int


class BulkItem(BaseModel):
    run_id: uuid.UUID
    outcome: Outcome
    new_run_id: uuid.UUID | None = Field(description="The resumed run, once accepted")
    why: str | None = Field(description="Why the run was (or would be) skipped or rejected")
    from_step: str | None = Field(description="The step the run is resumed from (null: it has no eligible step)")
    plan: PlanSummary | None = Field(
        default=None, description="Dry run only: how many steps would be reused and re-run"
    )


class BulkResumeRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01939d7e-5b2a-7c1e-9f00-3c9a3b6f4d21",
                    "project_id": "5d1c2f5e-1f7b-4c1e-8a0e-2b8f9d0c4e21",
                    "workflow_id": "0b7e5d7c-2b4f-4e6a-8c0d-1f3e5a7c9b2d",
                    "status": "running",
                    "matched": 200,
                    "accepted": 120,
                    "skipped": 3,
                    "rejected": 1,
                    "pending": 76,
                    "created_by": "8f14e6f8-0b1c-4d3e-9f5a-7b8c9d0e1f2a",
                    "created_at": "2026-12-02T10:00:00Z",
                    "started_at": "2026-12-02T10:00:00.050Z",
                    "cancelled_at": None,
                    "finished_at": None,
                    "error": None,
                    "request": {
                        "filter": {
                            "workflow_id": "0b7e5d7c-2b4f-4e6a-8c0d-1f3e5a7c9b2d",
                            "status": ["failed"],
                            "failed_step": "charge",
                        },
                        "from_step": None,
                        "workflow_version": "original",
                        "reason": "outage over",
                        "max_per_second": 50,
                    },
                    "items": [
                        {
                            "run_id": "a1b2c3d4-0000-4000-8000-000000000001",
                            "outcome": "accepted",
                            "new_run_id": "01939d7e-6000-7000-8000-000000000002",
                            "why": None,
                            "from_step": "charge",
                        }
                    ],
                }
            ]
        }
    )
    id: uuid.UUID | None = Field(description="null for a dry run")
    project_id: uuid.UUID
    workflow_id: uuid.UUID
    status: JobStatus
    matched: int
    accepted: int
    skipped: int
    rejected: int
    pending: int
    created_by: uuid.UUID
    created_at: datetime | None
    started_at: datetime | None = Field(description="When the first run was handed to a resume")
    cancelled_at: datetime | None
    finished_at: datetime | None = Field(description="Set once every run has its outcome (also after a cancel)")
    error: str | None = Field(description="Why a `failed` job stopped")
    request: dict[str, Any] = Field(
        description="The request as it was accepted (filter, from_step, workflow_version, reason, max_per_second)"
    )
    items: list[BulkItem]


class BulkEvent(BaseModel):
    id: int = Field(description="Monotonic; usable as the SSE id and as `Last-Event-ID`")
    bulk_id: uuid.UUID
    type: Literal["bulk_progress"]
    payload: dict[str, Any] = Field(
        description="`status`, `final`, the counts and the `items` settled since the previous event"
    )
    at: datetime


class BulkEventList(BaseModel):
    items: list[BulkEvent]
    next_cursor: str | None
