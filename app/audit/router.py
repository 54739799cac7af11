"""HTTP route for the owner-only audit view."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict

from app.api import DbDep, errors_for
from app.audit import service
from app.auth.dependencies import CurrentUser
from app.storable import StorableText

router = APIRouter(tags=["audit"])


class AuditRead(BaseModel):
    id: int
    action: str
    outcome: Literal["accepted", "denied", "rejected"]
    actor_id: uuid.UUID | None
    project_id: uuid.UUID | None
    run_id: uuid.UUID | None
    step_key: str | None
    new_run_id: uuid.UUID | None
    reason: str | None
    status_code: int | None
    request_id: str | None
    ip: str | None
    user_agent: str | None
    detail: dict[str, Any]
    at: datetime


class AuditList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    items: list[AuditRead]
    next_cursor: str | None = None


@router.get(
    "/projects/{project_id}/audit",
    response_model=AuditList,
    operation_id="audit-list",
    summary="The project's audit log, newest first (owner)",
    responses=errors_for(401, 403, 404, 422, 503),
)
async def list_audit(
    project_id: Annotated[uuid.UUID, Path()],
    user: CurrentUser,
    db: DbDep,
    action: Annotated[StorableText | None, Query(max_length=100)] = None,
    actor_id: uuid.UUID | None = None,
    run_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the previous page")
    ] = None,
):
    async with db.user_scope(user.claims) as tx:
        return await service.list_audit(
            tx, project_id, action=action, actor_id=actor_id, run_id=run_id, cursor=cursor, limit=limit
        )
