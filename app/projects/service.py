"""Rules for projects and membership, including the role check every domain uses."""

from __future__ import annotations

import uuid

from app.auth.jwt import User
from app.db.engine import Tx
from app.db.ids import new_id
from app.errors import Forbidden, NotFound, Unprocessable
from app.projects.repository import ProjectRepository

RANK = {"viewer": 1, "editor": 2, "owner": 3}


async def require_role(tx: Tx, project_id: uuid.UUID, min_role: str, what: str = "project") -> str:
    """The caller's role in the project; 404 for non-members (existence is not leaked), 403 if too low."""
    role = await ProjectRepository(tx).role_of_caller(project_id)
    if role is None:
        raise NotFound(f"No such {what}.")
    if RANK[role] < RANK[min_role]:
        raise Forbidden(f"This needs the {min_role} role; you are {role}.")
    return role


def check_role(role: str | None, min_role: str, what: str) -> None:
    if role is None:
        raise NotFound(f"No such {what}.")
    if RANK[role] < RANK[min_role]:
        raise Forbidden(f"This needs the {min_role} role; you are {role}.")


async def create_project(tx: Tx, user: User, name: str):
    repo = ProjectRepository(tx)
    project_id = new_id()
    await repo.create(project_id, name, user.id)
    return await repo.get_for_member(project_id)


async def list_projects(tx: Tx):
    return await ProjectRepository(tx).list_for_member()


async def add_member(tx: Tx, user: User, project_id: uuid.UUID, member_id: uuid.UUID, role: str):
    await require_role(tx, project_id, "owner")
    if member_id == user.id and role != "owner":
        raise Unprocessable(
            "Owners cannot demote themselves.", errors=[{"loc": ["body", "role"], "msg": "cannot demote yourself"}]
        )
    return await ProjectRepository(tx).upsert_member(project_id, member_id, role)


async def list_members(tx: Tx, project_id: uuid.UUID):
    await require_role(tx, project_id, "viewer")
    return await ProjectRepository(tx).list_members(project_id)
