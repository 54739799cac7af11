"""Audit rules: who may read the log, and the request facts every row carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import Request

from app.audit.repository import AuditRepository
from app.db.engine import Tx
from app.errors import Unprocessable
from app.projects.service import require_role


@dataclass(frozen=True, slots=True)
class RequestFacts:
    request_id: str | None
    ip: str | None
    user_agent: str | None

    @classmethod
    def of(cls, request: Request) -> RequestFacts:
        ua = request.headers.get("user-agent")
        return cls(
            getattr(request.state, "request_id", None),
            request.client.host if request.client else None,
            ua[:500] if ua else None,
        )


async def list_audit(tx: Tx, project_id: uuid.UUID, *, action, actor_id, run_id, cursor, limit) -> dict:
    await require_role(tx, project_id, "owner")
    before = None
    if cursor:
        try:
            before = int(cursor)
        except ValueError:
            raise Unprocessable(
                "The cursor is not valid.", errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}]
            ) from None
    rows = await AuditRepository(tx).list(
        project_id, action=action, actor_id=actor_id, run_id=run_id, before_id=before, limit=limit
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [dict(r) for r in rows], "next_cursor": str(rows[-1]["id"]) if more and rows else None}
