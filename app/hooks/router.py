"""HTTP route for signed webhook deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response

from app.api import CipherDep, DbDep, errors_for
from app.hooks.service import accept_hook
from app.runs.schemas import HookAccepted

router = APIRouter(tags=["hooks"])


@router.post(
    "/hooks/{workflow_id}",
    status_code=202,
    response_model=HookAccepted,
    operation_id="hooks-deliver",
    summary="Trigger a workflow with a signed webhook",
    description="Standard Webhooks (https://www.standardwebhooks.com): send `webhook-id` (your unique "
    "id for this delivery), `webhook-timestamp` (Unix seconds, within 5 minutes of now) and "
    '`webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{raw '
    "body}\">`, keyed with the bytes the workflow's `whsec_<base64>` secret encodes. Several "
    "space-separated signatures are accepted (secret rotation). The same `webhook-id` with the "
    "same body returns the same run (`duplicate: true`); with another body it is a 409. Any "
    "Standard Webhooks library signs this way.",
    openapi_extra={
        "requestBody": {
            "required": False,
            "description": "Any JSON value; it becomes the run's input (an empty body or `null` means `{}`).",
            "content": {
                "application/json": {
                    "schema": {},
                    "examples": {"order": {"value": {"order_id": "A-1001", "amount": 42}}},
                }
            },
        }
    },
    responses=errors_for(401, 409, 413, 422, 503),
)
async def deliver(
    workflow_id: Annotated[uuid.UUID, Path()],
    request: Request,
    db: DbDep,
    cipher: CipherDep,
    response: Response,
    webhook_id: Annotated[str | None, Header(max_length=200)] = None,
    webhook_timestamp: Annotated[str | None, Header(max_length=20)] = None,
    webhook_signature: Annotated[str | None, Header(max_length=2000)] = None,
):
    body = await request.body()
    run_id, duplicate = await accept_hook(
        db, cipher, workflow_id, body, webhook_id, webhook_timestamp, webhook_signature
    )
    response.headers["Location"] = f"/runs/{run_id}"
    return {"run_id": run_id, "duplicate": duplicate}
