"""HTTP routes for runs: start, read, list, steps, lineage, events (JSON or SSE), cancel and pause."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BeforeValidator

from app.runs.stream import events_response
from app.api import DbDep, EventsAfter, EventsLimit, LastEventId, errors_for, wants_event_stream
from app.auth.dependencies import CurrentUser
from app.storable import StorableText
from app.runs import service
from app.runs.schemas import EventList, Lineage, RunDetail, RunList, RunStart, StepDetail

router = APIRouter(tags=["runs"])
RunId = Annotated[uuid.UUID, Path(description="Run id")]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value):
    # pydantic would also take Unix seconds ("0.5") or a naive time; the spec promises an RFC 3339 date-time.
    if isinstance(value, str) and not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-26T10:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]
# A stream ends when the run settles: finished, or paused (a paused run changes only by being cancelled;
# a resume starts a new run with its own stream).
FINAL_EVENTS = {"run_succeeded", "run_failed", "run_cancelled", "run_paused"}


@router.post(
    "/workflows/{workflow_id}/runs",
    status_code=202,
    response_model=RunDetail,
    operation_id="runs-start",
    summary="Start a run of a workflow (editor+)",
    responses=errors_for(401, 403, 404, 422, 503),
)
async def start_run(
    workflow_id: Annotated[uuid.UUID, Path()], body: RunStart, user: CurrentUser, db: DbDep, response: Response
):
    async with db.user_scope(user.claims) as tx:
        run = await service.start_run(tx, user, workflow_id, body.input, body.version)
    response.headers["Location"] = f"/runs/{run['id']}"
    return run


@router.get(
    "/runs",
    response_model=RunList,
    operation_id="runs-list",
    summary="Runs visible to the caller, newest first (keyset pagination)",
    responses=errors_for(401, 404, 422, 503),
)
async def list_runs(
    request: Request,
    user: CurrentUser,
    db: DbDep,
    project_id: uuid.UUID | None = None,
    workflow_id: uuid.UUID | None = None,
    status: Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"] | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    unresolved: Annotated[
        bool,
        Query(
            description=(
                "Only runs that need attention (DESIGN §10.1): failed, paused or cancelled, not resolved "
                "by a later run, and with no run of their lineage queued or running"
            )
        ),
    ] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+={0,2}$", description="`next_cursor` of the previous page"),
    ] = None,
):
    async with db.user_scope(user.claims) as tx:
        return await service.list_runs(
            tx,
            project_id=project_id,
            workflow_id=workflow_id,
            status=status,
            created_after=created_after,
            created_before=created_before,
            cursor=cursor,
            limit=limit,
            seal=_cursor_seal(request),
            unresolved=unresolved,
        )


def _cursor_seal(request: Request) -> service.CursorSeal:
    query = "&".join(sorted(f"{k}={v}" for k, v in request.query_params.multi_items() if k not in ("cursor", "limit")))
    return service.CursorSeal(request.app.state.cipher.derive_key("runs-list-cursor"), query)


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    operation_id="runs-get",
    summary="A run with its steps (each marked eligible_for_resume) and the runs resumed from it",
    responses=errors_for(401, 404, 422, 503),
)
async def get_run(run_id: RunId, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        return await service.get_run(tx, run_id)


@router.get(
    "/runs/{run_id}/steps/{step_key}",
    response_model=StepDetail,
    operation_id="runs-step-get",
    summary="One step with its full stored output and its attempts",
    responses=errors_for(401, 404, 422, 503),
)
async def get_step(
    run_id: RunId,
    step_key: Annotated[StorableText, Path(max_length=100, description="Step key")],
    user: CurrentUser,
    db: DbDep,
):
    async with db.user_scope(user.claims) as tx:
        return await service.get_step(tx, run_id, step_key)


@router.get(
    "/runs/{run_id}/lineage",
    response_model=Lineage,
    operation_id="runs-lineage",
    summary="The whole resume tree from the root run",
    responses=errors_for(401, 404, 422, 503),
)
async def lineage(run_id: RunId, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        return await service.lineage(tx, run_id)


@router.get(
    "/runs/{run_id}/events",
    response_model=EventList,
    operation_id="runs-events",
    summary="The run's events: JSON, or a live Server-Sent Events stream with Accept: text/event-stream",
    description="With `Accept: text/event-stream` the response replays events after `Last-Event-ID` "
    "(or `after`), then streams new ones as they commit, with a heartbeat comment every "
    "15 s, and ends after the run reaches succeeded, failed, cancelled or paused (reconnect "
    "with `Last-Event-ID` to follow a paused run that is later cancelled). Browsers: the "
    "native `EventSource` cannot send `Authorization`; read the stream with `fetch` and a "
    "`ReadableStream`, as the reference console at `/console` does.",
    responses=errors_for(401, 404, 422, 503) | {200: {"content": {"text/event-stream": {}}}},
)
async def events(
    run_id: RunId,
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
        run_id,
        service.list_events,
        lambda ev: ev["type"] in FINAL_EVENTS,
        after,
        limit,
        last_event_id,
        wants_event_stream(request.headers.get("accept", "")),
    )
    return out


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=RunDetail,
    operation_id="runs-cancel",
    summary="Cancel a run (editor+): in-flight requests are aborted, no new step starts",
    responses=errors_for(401, 403, 404, 409, 422, 503),
)
async def cancel(run_id: RunId, user: CurrentUser, db: DbDep, response: Response):
    async with db.user_scope(user.claims) as tx:
        run = await service.request_stop(tx, run_id, "cancel")
    response.headers["Location"] = f"/runs/{run_id}"
    return run


@router.post(
    "/runs/{run_id}/pause",
    status_code=202,
    response_model=RunDetail,
    operation_id="runs-pause",
    summary="Pause a run (editor+): in-flight steps finish, no new step starts",
    responses=errors_for(401, 403, 404, 409, 422, 503),
)
async def pause(run_id: RunId, user: CurrentUser, db: DbDep, response: Response):
    async with db.user_scope(user.claims) as tx:
        run = await service.request_stop(tx, run_id, "pause")
    response.headers["Location"] = f"/runs/{run_id}"
    return run
