"""SQL that only resume needs: idempotency records."""
from __future__ import annotations

import uuid

from app.db.engine import Tx


class IdempotencyRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def get(self, user_id: uuid.UUID, scope: str, key: str):
        return await self.tx.fetchrow(
            "select request_hash, status_code, response from idempotency_records"
            " where user_id = $1 and scope = $2 and key = $3 and created_at > now() - interval '24 hours'",
            user_id, scope, key)

    async def put(self, user_id: uuid.UUID, scope: str, key: str, request_hash: str, status_code: int,
                  response: dict) -> None:
        # A record older than 24 h is replaced; a live one makes a concurrent twin fail (unique key).
        await self.tx.execute(
            "insert into idempotency_records (user_id, scope, key, request_hash, status_code, response)"
            " values ($1, $2, $3, $4, $5, $6)"
            " on conflict (user_id, scope, key) do update set request_hash = excluded.request_hash,"
            " status_code = excluded.status_code, response = excluded.response, created_at = now()"
            " where idempotency_records.created_at <= now() - interval '24 hours'",
            user_id, scope, key, request_hash, status_code, response)
