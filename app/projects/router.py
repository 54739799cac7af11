"""HTTP routes for projects, members and secrets."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api import CipherDep, DbDep, errors_for
from app.auth.dependencies import CurrentUser
from app.projects import service
from app.projects.schemas import (
    MemberCreate,
    MemberList,
    MemberRead,
    ProjectCreate,
    ProjectList,
    ProjectRead,
    SecretPut,
)
from app.secrets import service as secrets_service

router = APIRouter(tags=["projects"])
ProjectId = Annotated[uuid.UUID, Path(description="Project id")]


@router.post(
    "/projects",
    status_code=201,
    response_model=ProjectRead,
    operation_id="projects-create",
    summary="Create a project (the caller becomes its owner)",
    responses=errors_for(401, 422, 503),
)
async def create_project(body: ProjectCreate, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        row = await service.create_project(tx, user, body.name)
    return dict(row)


@router.get(
    "/projects",
    response_model=ProjectList,
    operation_id="projects-list",
    summary="Projects the caller is a member of",
    responses=errors_for(401, 503),
)
async def list_projects(user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        rows = await service.list_projects(tx)
    return {"items": [dict(r) for r in rows], "next_cursor": None}


@router.post(
    "/projects/{project_id}/members",
    status_code=201,
    response_model=MemberRead,
    operation_id="projects-members-add",
    summary="Add a member or change a member's role (owner)",
    responses=errors_for(401, 403, 404, 422, 503),
)
async def add_member(project_id: ProjectId, body: MemberCreate, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        row = await service.add_member(tx, user, project_id, body.user_id, body.role)
    return dict(row)


@router.get(
    "/projects/{project_id}/members",
    response_model=MemberList,
    operation_id="projects-members-list",
    summary="Members of a project",
    responses=errors_for(401, 404, 422, 503),
)
async def list_members(project_id: ProjectId, user: CurrentUser, db: DbDep):
    async with db.user_scope(user.claims) as tx:
        rows = await service.list_members(tx, project_id)
    return {"items": [dict(r) for r in rows], "next_cursor": None}


@router.put(
    "/projects/{project_id}/secrets/{name}",
    status_code=204,
    operation_id="projects-secrets-put",
    summary="Create or replace a project secret (editor+); the value is never returned",
    responses=errors_for(401, 403, 404, 422, 503),
)
async def put_secret(
    project_id: ProjectId,
    name: Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")],
    body: SecretPut,
    user: CurrentUser,
    db: DbDep,
    cipher: CipherDep,
):
    async with db.user_scope(user.claims) as tx:
        await secrets_service.put_secret(tx, cipher, project_id, name, body.value)
    return Response(status_code=204)
