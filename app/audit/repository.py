"""SQL for the audit log (INSERT and SELECT only: UPDATE and DELETE raise in the database)."""

from __future__ import annotations

import uuid

from app.db.engine import Tx

AUDIT_COLUMNS = (
    "id, action, outcome, actor_id, project_id, run_id, step_key, new_run_id, reason, status_code,"
    " request_id, ip, user_agent, detail, at"
)


class AuditRepository:
    def __init__(self, tx: Tx):
        self.tx = tx

    async def insert(
        self,
        *,
        action: str,
        outcome: str,
        actor_id,
        project_id,
        run_id=None,
        step_key=None,
        new_run_id=None,
        reason=None,
        status_code=None,
        request_id=None,
        ip=None,
        user_agent=None,
        detail: dict | None = None,
    ) -> None:
        await self.tx.execute(
            "insert into audit_log (action, outcome, actor_id, project_id, run_id, step_key, new_run_id, reason,"
            " status_code, request_id, ip, user_agent, detail)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            action,
            outcome,
            actor_id,
            project_id,
            run_id,
            step_key,
            new_run_id,
            reason,
            status_code,
            request_id,
            ip,
            user_agent,
            detail or {},
        )

    async def project_of_run(self, run_id: uuid.UUID) -> uuid.UUID | None:
        """Service scope: the project a run belongs to, even when the caller cannot see it."""
        return await self.tx.fetchval("select project_id from runs where id = $1", run_id)

    async def list(self, project_id: uuid.UUID, *, action, actor_id, run_id, before_id, limit):
        conds, args = ["project_id = $1"], [project_id]
        for col, val in (("action", action), ("actor_id", actor_id), ("run_id", run_id)):
            if val is not None:
                args.append(val)
                conds.append(f"{col} = ${len(args)}")
        if before_id is not None:
            args.append(before_id)
            conds.append(f"id < ${len(args)}")
        args.append(limit + 1)
        return await self.tx.fetch(
            f"select {AUDIT_COLUMNS} from audit_log where {' and '.join(conds)} order by id desc limit ${len(args)}",
            *args,
        )
