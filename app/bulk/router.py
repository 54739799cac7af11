"""HTTP routes for bulk resume: create (or preview), progress, cancel, progress events (JSON or SSE)."""

from __future__ import annotations

import uuid
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response

from app.runs.stream import events_response
from app.api import DbDep, EventsAfter, EventsLimit, LastEventId, errors_for, wants_event_stream
from app.audit.service import RequestFacts
from app.auth.dependencies import CurrentUser
from app.bulk import service
from app.bulk.schemas import BulkEventList, BulkResumeCreate, BulkResumeRead, Outcome

router = APIRouter(tags=["bulk-resume"])
BulkId = Annotated[uuid.UUID, Path(description="Bulk resume id")]

CREATE_DESCRIPTION = """Resume every run a filter matches, throttled, through exactly the single-resume path.

* Editors and owners only (viewer → 403; not a member → 404).
* The filter needs `workflow_id`; `status` defaults to `failed`, `paused` and `cancelled`. Matching is
  frozen now: at most 10,000 runs (more → 422 saying how many matched).
* `from_step` absent → each run's first eligible step; a step the workflow does not have → 422.
* `dry_run: true` → 200 with every matched run, its plan (`reuse`/`rerun` counts) or why it would be
  skipped or rejected; nothing is written.
* Otherwise 202 with the job and `Location: /bulk-resumes/{id}`. The worker resumes one run every
  1/`max_per_second` s. Each resume has the same eligibility checks, audit row and one-active-child rule as
  `POST /runs/{run_id}/resume`. Runs that are resolved (a succeeded descendant), being resumed (a queued
  or running descendant) or already resumed are `skipped`.
* `Idempotency-Key`: the same key and body from the same user returns the same job; another body → 422."""


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, default=str), status_code=status, media_type="application/json", headers=headers)


@router.post(
    "/projects/{project_id}/bulk-resumes",
    status_code=202,
    response_model=BulkResumeRead,
    operation_id="bulk-resumes-create",
    summary="Resume every run a filter matches, throttled and audited (editor+); or preview it",
    description=CREATE_DESCRIPTION,
    responses=errors_for(401, 403, 404, 413, 422, 503)
    | {
        200: {
            "description": "Dry run: the matched runs and what a resume would do to each; nothing written",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BulkResumeRead"}}},
        }
    },
)
async def create(
    project_id: Annotated[uuid.UUID, Path()],
    body: BulkResumeCreate,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    async with db.user_scope(user.claims) as tx:
        status, job = await service.create(tx, user, project_id, body, idempotency_key, RequestFacts.of(request))
    headers = {"Location": f"/bulk-resumes/{job['id']}"} if job["id"] is not None else None
    return _json(status, job, headers)


@router.get(
    "/bulk-resumes/{bulk_id}",
    response_model=BulkResumeRead,
    operation_id="bulk-resumes-get",
    summary="A bulk resume's progress and the outcome of every run",
    responses=errors_for(401, 404, 422, 503),
)
async def get(
    bulk_id: BulkId,
    user: CurrentUser,
    db: DbDep,
    outcome: Annotated[Outcome | None, Query(description="Only the items with this outcome")] = None,
):
    async with db.user_scope(user.claims) as tx:
        return _json(200, await service.get(tx, bulk_id, outcome))


@router.post(
    "/bulk-resumes/{bulk_id}/cancel",
    status_code=202,
    response_model=BulkResumeRead,
    operation_id="bulk-resumes-cancel",
    summary="Cancel a bulk resume (editor+): runs not yet resumed are skipped",
    description="Runs already handed to a resume finish as they would; every other pending run is "
    "`skipped`. 409 when the job has already ended.",
    responses=errors_for(401, 403, 404, 409, 422, 503),
)
async def cancel(bulk_id: BulkId, request: Request, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        job = await service.cancel(tx, user, bulk_id, RequestFacts.of(request))
    return _json(202, job, {"Location": f"/bulk-resumes/{bulk_id}"})


@router.get(
    "/bulk-resumes/{bulk_id}/events",
    response_model=BulkEventList,
    operation_id="bulk-resumes-events",
    summary="A bulk resume's `bulk_progress` events: JSON, or a live SSE stream with Accept: text/event-stream",
    description="Each event carries the job's `status`, its counts and the runs settled since the "
    "previous event. With `Accept: text/event-stream` the response replays events after "
    "`Last-Event-ID` (or `after`), then streams new ones as they commit, and ends after the "
    "event with `final: true`.",
    responses=errors_for(401, 404, 422, 503) | {200: {"content": {"text/event-stream": {}}}},
)
async def events(
    bulk_id: BulkId,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    after: EventsAfter = 0,
    limit: EventsLimit = 500,
    last_event_id: LastEventId = None,
):
    out = await events_response(
        request,
        db,
        user.claims,
        bulk_id,
        service.list_events,
        lambda ev: bool(ev["payload"].get("final")),
        after,
        limit,
        last_event_id,
        wants_event_stream(request.headers.get("accept", "")),
    )
    return _json(200, out) if isinstance(out, dict) else out
