"""Webhook triggers, the Standard Webhooks way (DESIGN §9.4; https://www.standardwebhooks.com):
`webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">` (several
space-separated signatures allowed, so a sender can rotate), 5-minute tolerance, and one run per
`webhook-id`: the same id with the same body returns that run, with another body it is a 409.

Verification is the `standardwebhooks` package's. The key is the bytes the secret encodes:
`whsec_<base64>`. Workflows created before this scheme were given `whsec_<URL-safe base64 of 32
random bytes>`; those secrets stay valid and mean the same 32 bytes (decoding accepts both
alphabets), so their senders only switch headers — or spell the secret with `+` and `/` for a
Standard Webhooks library that expects the standard alphabet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid

import asyncpg
import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.db.engine import Database
from app.db.ids import new_id
from app.errors import Conflict, Unauthorized, Unprocessable
from app.runs.repository import RunRepository
from app.runs.service import pending_rows
from app.secrets.crypto import Cipher
from app.storable import check_json
from app.workflows.repository import WorkflowRepository
from app.workflows.service import dag_cache, webhook_context

TOLERANCE_S = 300  # the package's fixed tolerance (5 minutes), stated here for the docs
SECRET_PREFIX = "whsec_"
BAD_SIGNATURE = "The signature does not match."


def secret_key(secret: str) -> bytes:
    """The HMAC key a stored secret stands for (standard or, for older workflows, URL-safe base64)."""
    text = secret.removeprefix(SECRET_PREFIX).translate(str.maketrans("-_", "+/"))
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<signature>` for these headers and body (for senders' docs and tests)."""
    import datetime

    ts = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return Webhook(secret_key(secret)).sign(msg_id, ts, body.decode())


def _verify(secret: str, body: bytes, msg_id: str, timestamp: str, signature: str) -> None:
    try:
        Webhook(secret_key(secret)).verify(
            body,
            {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature},
            json_parse=False,
        )
    except WebhookVerificationError as exc:
        text = str(exc)
        if "too old" in text or "too new" in text:
            raise Unauthorized("The webhook-timestamp is outside the 5-minute window.") from None
        if "Invalid Signature Headers" in text:
            raise Unauthorized("The webhook-timestamp must be Unix seconds.") from None
        raise Unauthorized(BAD_SIGNATURE) from None
    except (ValueError, binascii.Error, OverflowError, OSError):
        # A malformed signature list, a body that is not UTF-8 (it cannot be verified, nor be JSON).
        raise Unauthorized(BAD_SIGNATURE) from None


def body_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


async def accept_hook(
    db: Database,
    cipher: Cipher,
    wf_id: uuid.UUID,
    body: bytes,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
) -> tuple[uuid.UUID, bool]:
    if not (msg_id and timestamp and signature):
        raise Unauthorized("webhook-id, webhook-timestamp and webhook-signature are required.")
    digest = body_hash(body)
    async with db.service_scope() as tx:
        wf = await WorkflowRepository(tx).webhook_secret(wf_id)
        if wf is None:
            raise Unauthorized(BAD_SIGNATURE)  # unknown workflow: reveal nothing
        secret = cipher.decrypt(wf["webhook_secret_nonce"], wf["webhook_secret_ct"], webhook_context(wf_id))
        _verify(secret, body, msg_id, timestamp, signature)
        repo = RunRepository(tx)
        existing = await repo.find_by_delivery(wf_id, msg_id)
        if existing is not None:
            return _same_delivery(existing, digest)
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            raise Unprocessable(
                "The body is not valid JSON.", errors=[{"loc": ["body"], "msg": "invalid JSON"}]
            ) from None
        if payload is None:
            payload = {}  # JSON null means no input, like an empty body (runs.input is NOT NULL)
        try:
            check_json(payload)
        except ValueError as exc:
            raise Unprocessable("The body cannot be stored.", errors=[{"loc": ["body"], "msg": str(exc)}]) from None
        dag = await dag_cache.get(tx, wf_id, wf["latest_version"])
        if dag is None:
            raise Conflict("The workflow's latest version cannot be loaded.")
        run_id = new_id()
        try:
            await repo.insert_run(
                run_id=run_id,
                project_id=wf["project_id"],
                workflow_id=wf_id,
                version=wf["latest_version"],
                trigger="webhook",
                input=payload,
                delivery_id=msg_id,
                delivery_hash=digest,
                pending=pending_rows(dag),
                event_payload={"delivery_id": msg_id},
            )
        except asyncpg.UniqueViolationError:
            pass  # a concurrent delivery with the same id won; read it below in a fresh transaction
        else:
            return run_id, False
    async with db.service_scope() as tx:
        existing = await RunRepository(tx).find_by_delivery(wf_id, msg_id)
    return _same_delivery(existing, digest)


def _same_delivery(existing, digest: bytes) -> tuple[uuid.UUID, bool]:
    run_id, stored = existing
    if stored is not None and stored != digest:
        raise Conflict("This webhook-id was already delivered with another body.")
    return run_id, True
