"""HTTP route for signed webhook deliveries."""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response

from app.api import CipherDep, DbDep, errors_for
from app.hooks.service import accept_hook
from app.runs.schemas import HookAccepted

router = APIRouter(tags=["hooks"])


@router.post("/hooks/{workflow_id}", status_code=202, response_model=HookAccepted, operation_id="hooks-deliver",
             summary="Trigger a workflow with a signed webhook",
             description="Sign `\"<X-MeshHook-Timestamp>.<raw body>\"` with HMAC-SHA256 under the workflow's "
                         "webhook secret and send it as `X-MeshHook-Signature: sha256=<hex>`. The timestamp must "
                         "be within ±5 minutes. Repeating an `X-MeshHook-Delivery` id returns the same run.",
             openapi_extra={"requestBody": {"required": False, "description": "Any JSON value; it becomes the run's "
                                            "input (an empty body or `null` means `{}`).",
                                            "content": {"application/json": {"schema": {}, "examples": {
                                                "order": {"value": {"order_id": "A-1001", "amount": 42}}}}}}},
             responses=errors_for(401, 409, 413, 422, 503))
async def deliver(workflow_id: Annotated[uuid.UUID, Path()], request: Request, db: DbDep, cipher: CipherDep,
                  response: Response,
                  x_meshhook_signature: Annotated[str | None, Header(max_length=200)] = None,
                  x_meshhook_timestamp: Annotated[str | None, Header(max_length=20)] = None,
                  x_meshhook_delivery: Annotated[str | None, Header(max_length=200)] = None):
    body = await request.body()
    run_id, duplicate = await accept_hook(db, cipher, workflow_id, body, x_meshhook_signature,
                                          x_meshhook_timestamp, x_meshhook_delivery)
    response.headers["Location"] = f"/runs/{run_id}"
    return {"run_id": run_id, "duplicate": duplicate}
