"""SQL for projects and members (runs under the caller's RLS)."""

from __future__ import annotations

import uuid

from app.db.engine import Tx


class ProjectRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def create(self, project_id: uuid.UUID, name: str, created_by: uuid.UUID) -> None:
        # No RETURNING: the owner row is added by a trigger, after which the row is visible.
        await self.tx.execute(
            "insert into projects (id, name, created_by) values ($1, $2, $3)", project_id, name, created_by
        )

    async def get_for_member(self, project_id: uuid.UUID):
        return await self.tx.fetchrow(
            "select p.id, p.name, p.created_by, p.created_at, m.role from projects p"
            " join project_members m on m.project_id = p.id and m.user_id = (select auth.uid())"
            " where p.id = $1",
            project_id,
        )

    async def list_for_member(self):
        return await self.tx.fetch(
            "select p.id, p.name, p.created_by, p.created_at, m.role from projects p"
            " join project_members m on m.project_id = p.id and m.user_id = (select auth.uid())"
            " order by p.created_at desc, p.id desc"
        )

    async def role_of_caller(self, project_id: uuid.UUID) -> str | None:
        return await self.tx.fetchval(
            "select role from project_members where project_id = $1 and user_id = (select auth.uid())", project_id
        )

    async def upsert_member(self, project_id: uuid.UUID, user_id: uuid.UUID, role: str):
        return await self.tx.fetchrow(
            "insert into project_members (project_id, user_id, role) values ($1, $2, $3)"
            " on conflict (project_id, user_id) do update set role = excluded.role"
            " returning project_id, user_id, role, created_at",
            project_id,
            user_id,
            role,
        )

    async def list_members(self, project_id: uuid.UUID):
        return await self.tx.fetch(
            "select project_id, user_id, role, created_at from project_members where project_id = $1"
            " order by created_at, user_id",
            project_id,
        )
