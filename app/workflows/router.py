"""HTTP routes for workflows and versions."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api import CipherDep, DbDep, errors_for
from app.auth.dependencies import CurrentUser
from app.workflows import service
from app.workflows.schemas import VersionCreate, VersionRead, WorkflowCreate, WorkflowCreated, WorkflowRead

router = APIRouter(tags=["workflows"])
WorkflowId = Annotated[uuid.UUID, Path(description="Workflow id")]


@router.post(
    "/projects/{project_id}/workflows",
    status_code=201,
    response_model=WorkflowCreated,
    operation_id="workflows-create",
    summary="Create a workflow with version 1 (editor+); the webhook secret is shown only here",
    responses=errors_for(401, 403, 404, 409, 422, 503),
)
async def create_workflow(
    project_id: Annotated[uuid.UUID, Path()],
    body: WorkflowCreate,
    user: CurrentUser,
    db: DbDep,
    cipher: CipherDep,
    response: Response,
):
    async with db.user_scope(user.claims) as tx:
        wf = await service.create_workflow(tx, cipher, user, project_id, body.slug, body.name, body.definition)
    response.headers["Location"] = f"/workflows/{wf['id']}"
    return wf


@router.post(
    "/workflows/{workflow_id}/versions",
    status_code=201,
    response_model=VersionRead,
    operation_id="workflows-versions-create",
    summary="Publish a new immutable version (editor+)",
    responses=errors_for(401, 403, 404, 422, 503),
)
async def add_version(workflow_id: WorkflowId, body: VersionCreate, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        return dict(await service.add_version(tx, user, workflow_id, body.definition))


@router.get(
    "/workflows/{workflow_id}",
    response_model=WorkflowRead,
    operation_id="workflows-get",
    summary="A workflow with its latest version and definition",
    responses=errors_for(401, 404, 422, 503),
)
async def get_workflow(workflow_id: WorkflowId, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        return await service.get_workflow(tx, workflow_id)


@router.get(
    "/workflows/{workflow_id}/versions/{version}",
    response_model=WorkflowRead,
    operation_id="workflows-versions-get",
    summary="A workflow with one of its versions' definition (e.g. the version a run executed)",
    responses=errors_for(401, 404, 422, 503),
)
async def get_version(
    workflow_id: WorkflowId, version: Annotated[int, Path(ge=1, le=2_147_483_647)], user: CurrentUser, db: DbDep
):
    async with db.user_scope(user.claims) as tx:
        return await service.get_workflow(tx, workflow_id, version)
