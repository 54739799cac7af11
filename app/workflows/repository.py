"""SQL for workflows and their immutable versions."""

from __future__ import annotations

import uuid

from app.db.engine import Tx


class WorkflowRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def create(
        self,
        wf_id: uuid.UUID,
        project_id: uuid.UUID,
        slug: str,
        name: str,
        nonce: bytes,
        ct: bytes,
        created_by: uuid.UUID | None,
    ) -> None:
        await self.tx.execute(
            "insert into workflows (id, project_id, slug, name, webhook_secret_nonce, webhook_secret_ct, created_by)"
            " values ($1, $2, $3, $4, $5, $6, $7)",
            wf_id,
            project_id,
            slug,
            name,
            nonce,
            ct,
            created_by,
        )

    async def next_version(self, wf_id: uuid.UUID) -> int:
        # The row lock orders concurrent version writers: numbers stay 1..n with no gaps.
        return await self.tx.fetchval(
            "update workflows set latest_version = latest_version + 1 where id = $1 returning latest_version", wf_id
        )

    async def insert_version(
        self, wf_id: uuid.UUID, project_id: uuid.UUID, version: int, definition: dict, created_by: uuid.UUID | None
    ):
        return await self.tx.fetchrow(
            "insert into workflow_versions (workflow_id, project_id, version, definition, created_by)"
            " values ($1, $2, $3, $4, $5) returning workflow_id, version, created_at",
            wf_id,
            project_id,
            version,
            definition,
            created_by,
        )

    async def get(self, wf_id: uuid.UUID):
        return await self.tx.fetchrow(
            "select id, project_id, slug, name, latest_version, created_at from workflows where id = $1", wf_id
        )

    async def get_with_version(self, wf_id: uuid.UUID, version: int | None):
        return await self.tx.fetchrow(
            "select w.id, w.project_id, w.slug, w.name, w.latest_version, w.created_at, v.version, v.definition"
            " from workflows w join workflow_versions v on v.workflow_id = w.id"
            " and v.version = coalesce($2, w.latest_version) where w.id = $1",
            wf_id,
            version,
        )

    async def definition(self, wf_id: uuid.UUID, version: int):
        return await self.tx.fetchval(
            "select definition from workflow_versions where workflow_id = $1 and version = $2", wf_id, version
        )

    async def webhook_secret(self, wf_id: uuid.UUID):
        """Service scope only: the API role has no grant on the secret columns."""
        return await self.tx.fetchrow(
            "select id, project_id, latest_version, webhook_secret_nonce, webhook_secret_ct from workflows where id = $1",
            wf_id,
        )
