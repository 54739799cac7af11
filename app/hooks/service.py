"""Webhook triggers: HMAC-SHA256 over "<timestamp>.<raw body>", ±5 minutes, one run per delivery id."""
from __future__ import annotations

import hashlib
import hmac
import time
import uuid

import asyncpg
import orjson

from app.db.engine import Database
from app.db.ids import new_id
from app.errors import Conflict, Unauthorized, Unprocessable
from app.runs.repository import RunRepository
from app.runs.service import pending_rows
from app.secrets.crypto import Cipher
from app.storable import check_json
from app.workflows.repository import WorkflowRepository
from app.workflows.service import dag_cache, webhook_context

TOLERANCE_S = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def accept_hook(db: Database, cipher: Cipher, wf_id: uuid.UUID, body: bytes, signature: str | None,
                      timestamp: str | None, delivery_id: str | None) -> tuple[uuid.UUID, bool]:
    if not signature or not timestamp:
        raise Unauthorized("X-MeshHook-Signature and X-MeshHook-Timestamp are required.")
    try:
        ts = int(timestamp)
    except ValueError:
        raise Unauthorized("X-MeshHook-Timestamp must be Unix seconds.") from None
    if abs(time.time() - ts) > TOLERANCE_S:
        raise Unauthorized("The timestamp is outside the 5-minute window.")
    async with db.service_scope() as tx:
        wf = await WorkflowRepository(tx).webhook_secret(wf_id)
        if wf is None:
            raise Unauthorized("The signature does not match.")  # unknown workflow: reveal nothing
        secret = cipher.decrypt(wf["webhook_secret_nonce"], wf["webhook_secret_ct"], webhook_context(wf_id))
        if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
            raise Unauthorized("The signature does not match.")
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            raise Unprocessable("The body is not valid JSON.", errors=[{"loc": ["body"], "msg": "invalid JSON"}]) from None
        if payload is None:
            payload = {}  # JSON null means no input, like an empty body (runs.input is NOT NULL)
        try:
            check_json(payload)
        except ValueError as exc:
            raise Unprocessable("The body cannot be stored.", errors=[{"loc": ["body"], "msg": str(exc)}]) from None
        repo = RunRepository(tx)
        if delivery_id:
            existing = await repo.find_by_delivery(wf_id, delivery_id)
            if existing is not None:
                return existing, True
        dag = await dag_cache.get(tx, wf_id, wf["latest_version"])
        if dag is None:
            raise Conflict("The workflow's latest version cannot be loaded.")
        run_id = new_id()
        try:
            await repo.insert_run(run_id=run_id, project_id=wf["project_id"], workflow_id=wf_id,
                                  version=wf["latest_version"], trigger="webhook", input=payload,
                                  delivery_id=delivery_id, pending=pending_rows(dag),
                                  event_payload={"delivery_id": delivery_id} if delivery_id else {})
        except asyncpg.UniqueViolationError:
            pass  # a concurrent delivery with the same id won; read it below in a fresh transaction
        else:
            return run_id, False
    async with db.service_scope() as tx:
        return await RunRepository(tx).find_by_delivery(wf_id, delivery_id), True
