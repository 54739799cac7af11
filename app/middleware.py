"""ASGI middleware: request ids, access log lines, and the request body size limit."""
from __future__ import annotations

import logging
import time
import uuid

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.observability.logging import request_id_var
from app.observability.metrics import HTTP_REQUESTS

log = logging.getLogger("meshhook.http")


class RequestContextMiddleware:
    """Gives every request an id (honouring a sane incoming X-Request-ID), logs one line per
    request, and answers 413 problem+json for bodies above the limit (declared or streamed)."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        length = None
        expects_continue = False
        for k, v in scope["headers"]:
            if k == b"x-request-id" and 0 < len(v) <= 64 and v.isascii():
                rid = v.decode()
            elif k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
            elif k == b"expect":
                expects_continue = v.lower() == b"100-continue"
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status_holder = {"status": 500}
        rid_header = (b"x-request-id", rid.encode())
        limit = self.max_body_bytes
        body = {"received": 0, "done": False, "too_large": False}

        async def drain() -> None:
            # Read and drop the rest of an over-limit body before answering, so the client gets
            # its 413 rather than a connection reset while it is still sending. A body far over
            # the limit is not read to its end; that connection is closed instead.
            while not body["done"] and body["received"] <= 8 * limit:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body["received"] += len(message.get("body", b""))
                body["done"] = not message.get("more_body", False)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = list(message.get("headers", [])) + [rid_header]
                if body["too_large"]:
                    if not expects_continue:  # a client waiting for 100 Continue has sent nothing
                        await drain()
                    if not body["done"]:
                        headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            if length is not None and length > limit:
                body["too_large"] = True
                await self._too_large(scope, send_with_id, rid)
                return

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    body["received"] += len(message.get("body", b""))
                    body["done"] = not message.get("more_body", False)
                    if body["received"] > limit:
                        body["too_large"] = True
                        raise _BodyTooLarge(limit)
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except _BodyTooLarge:
                if "started" not in status_holder:
                    await self._too_large(scope, send_with_id, rid)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            status = status_holder["status"]
            HTTP_REQUESTS.labels(scope["method"], str(status)).inc()
            if scope["path"] not in ("/healthz", "/metrics"):
                log.info("request", extra={"method": scope["method"], "path": scope["path"],
                                           "status": status, "ms": round(elapsed_ms, 2)})
            request_id_var.reset(token)

    async def _too_large(self, scope, send, rid):
        body = orjson.dumps({"type": "https://meshhook.dev/problems/payload-too-large", "title": "Payload too large",
                             "status": 413, "detail": f"The request body exceeds {self.max_body_bytes} bytes.",
                             "instance": scope["path"], "request_id": rid})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so that FastAPI's body parsing re-raises it (it turns other errors into a 400)
    and the problem+json handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body exceeds {limit} bytes.")
