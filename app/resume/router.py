"""HTTP routes for resume-from-step and its preview."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
import orjson
from fastapi.responses import Response

from app.api import DbDep, errors_for
from app.audit.service import RequestFacts
from app.auth.dependencies import CurrentUser
from app.resume import service
from app.resume.schemas import ResumePlanRead, ResumeRequest
from app.runs.schemas import RunDetail

router = APIRouter(tags=["resume"])

RESUME_DESCRIPTION = """Start a new run that continues this failed, paused or cancelled run from `from_step`.

* Editors and owners only (viewer → 403; not a member → 404).
* Eligible steps are `failed`, `paused` or `cancelled` with every ancestor `succeeded` or `skipped`;
  otherwise 409 with `eligible_steps`. An unknown step or a malformed body → 422.
* Re-executed: the chosen step, its descendants and every step that did not succeed. Every other
  succeeded step is copied with its identical output and `reused_from` set.
* At most one queued or running resumed run per parent: a second concurrent request → 409 with `active_run_id`.
* `Idempotency-Key`: the same key and body from the same user within 24 h returns the same response;
  the same key with another body → 422.
* Every attempt is written to the audit log (`run.resume`).
* Resolved runs (DESIGN §10.1): when a later resumed run of this run's lineage succeeded, the run shows
  `resolved_by` and resuming it again → 409 with `resolved_by` (a second approval never runs the
  downstream steps twice), unless the body says `"rerun": true`.
* `"rerun": true` (§10.2): any step in `rerunnable_steps` of a succeeded, failed, cancelled or resolved
  run may be chosen; it and its descendants run again, every other succeeded step is reused.
* `"outputs": {"<key>": <json>}` (§10.2): those steps are recorded `succeeded` with that output and
  `override: {by, at, reason}` and are not executed; only steps the plan re-executes (else 422 naming
  the key), each at most `MESHHOOK_MAX_OUTPUT_BYTES` as JSON (else 413). The audit row keeps a
  SHA-256 of each output, never the output."""


@router.get(
    "/runs/{run_id}/resume-plan",
    response_model=ResumePlanRead,
    operation_id="runs-resume-plan",
    summary="Preview what a resume from a step would reuse and re-execute",
    description="Nothing is written. Returns the same 409/422 as the resume itself would.",
    responses=errors_for(401, 404, 409, 422, 503),
)
async def resume_plan(
    run_id: Annotated[uuid.UUID, Path()],
    user: CurrentUser,
    db: DbDep,
    from_step: Annotated[str, Query(min_length=1, max_length=100)],
):
    async with db.user_scope(user.claims) as tx:
        return await service.resume_plan(tx, run_id, from_step)


@router.post(
    "/runs/{run_id}/resume-plan",
    response_model=ResumePlanRead,
    operation_id="runs-resume-plan-body",
    summary="Preview a resume with the same body as POST /runs/{run_id}/resume (rerun, outputs)",
    description="Nothing is written and nothing is audited. Steps named in `outputs` are listed in "
    "`override`, not in `rerun`. Returns the same 409/413/422 as the resume itself would "
    "(except the check for a run already in flight).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/ResumeRequest"},
                    "examples": {
                        "mark-succeeded": {
                            "value": {
                                "from_step": "charge",
                                "outputs": {"charge": {"paid": True}},
                                "reason": "paid by phone",
                            }
                        },
                        "rerun": {"value": {"from_step": "total", "rerun": True}},
                    },
                }
            },
        }
    },
    responses=errors_for(401, 404, 409, 413, 422, 503),
)
async def resume_plan_body(run_id: Annotated[uuid.UUID, Path()], request: Request, user: CurrentUser, db: DbDep):
    req = service.parse_request(await request.body())
    async with db.user_scope(user.claims) as tx:
        return await service.resume_plan_for(tx, run_id, req)


@router.post(
    "/runs/{run_id}/resume",
    status_code=202,
    response_model=RunDetail,
    operation_id="runs-resume",
    summary="Resume a failed, paused or cancelled run from a step (editor+)",
    description=RESUME_DESCRIPTION,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/ResumeRequest"},
                    "examples": {
                        "retry": {"value": {"from_step": "charge", "reason": "Upstream API fixed"}},
                        "new-input": {
                            "value": {"from_step": "charge", "input": {"amount": 40}, "workflow_version": "latest"}
                        },
                        "approve": {"value": {"from_step": "review", "reason": "approved"}},
                        "mark-succeeded": {
                            "value": {
                                "from_step": "charge",
                                "outputs": {"charge": {"status": 200, "body": {"paid": True}}},
                                "reason": "paid by phone",
                            }
                        },
                        "rerun": {
                            "value": {"from_step": "total", "rerun": True, "reason": "the total expression was wrong"}
                        },
                    },
                }
            },
        }
    },
    responses=errors_for(401, 403, 404, 409, 413, 422, 503),
)
async def resume(
    run_id: Annotated[uuid.UUID, Path()],
    request: Request,
    user: CurrentUser,
    db: DbDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
):
    # The body is validated by the service, so that malformed requests are audited too.
    raw = await request.body()
    status, body = await service.resume(
        db, user, run_id, raw, idempotency_key, RequestFacts.of(request), cipher=request.app.state.cipher
    )
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type="application/json",
        headers={"Location": f"/runs/{body['id']}"},
    )


__all__ = ["router", "ResumeRequest"]
