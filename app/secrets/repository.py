"""SQL for project secrets."""

from __future__ import annotations

import uuid

from app.db.engine import Tx


class SecretRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def upsert(self, project_id: uuid.UUID, name: str, nonce: bytes, ciphertext: bytes) -> None:
        await self.tx.execute(
            "insert into secrets (project_id, name, nonce, ciphertext) values ($1, $2, $3, $4)"
            # The SET uses the parameters, not excluded.*: reading excluded columns needs SELECT on
            # them, and the API role is deliberately not granted SELECT on nonce/ciphertext.
            " on conflict (project_id, name) do update set nonce = $3,"
            " ciphertext = $4, updated_at = now()",
            project_id,
            name,
            nonce,
            ciphertext,
        )

    async def all_encrypted(self, project_id: uuid.UUID):
        """Service scope only (the worker): the API role cannot read ciphertexts."""
        return await self.tx.fetch("select name, nonce, ciphertext from secrets where project_id = $1", project_id)
