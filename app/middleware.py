"""ASGI middleware: request ids, access log lines, the request body size limit, the rules every JSON
body follows (one place, so every endpoint answers alike), and HEAD wherever GET works."""

from __future__ import annotations

import logging
import time
import uuid

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.observability.logging import request_id_var
from app.observability.metrics import HTTP_REQUESTS
from app.storable import json_body_problem

log = logging.getLogger("meshhook.http")


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False  # FastAPI would not read it as JSON either: say so the same way on every endpoint
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class RequestContextMiddleware:
    """Gives every request an id (honouring a sane incoming X-Request-ID), logs one line per
    request, answers 413 problem+json for bodies above the limit (declared or streamed), 415 for a
    body that is not JSON and 422 for one that breaks the JSON rules of `app.storable.json_body_problem`
    (the same answer on every endpoint, webhooks and resume included), and serves HEAD as GET without
    the body."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        length = None
        expects_continue = False
        content_type = None
        if scope["method"] == "HEAD":
            # RFC 9110: HEAD wherever GET. Without Accept, so that an event stream answers as JSON and ends.
            scope = {**scope, "method": "GET", "headers": [(k, v) for k, v in scope["headers"] if k != b"accept"]}
            send = _without_body(send)
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
            elif k == b"content-type":
                content_type = v
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

            app_receive = limited_receive
            if scope["method"] in _BODY_METHODS and (length is None or length > 0):
                try:
                    raw = await _read_all(limited_receive)
                except _BodyTooLarge:
                    await self._too_large(scope, send_with_id, rid)
                    return
                if raw:
                    refusal: tuple[int, str, str, str, list[dict] | None] | None = None
                    if not _is_json(content_type):
                        refusal = (
                            415,
                            "unsupported-media-type",
                            "Unsupported media type",
                            "The body must be JSON (Content-Type: application/json).",
                            None,
                        )
                    else:
                        problem = json_body_problem(raw)
                        if problem is not None:
                            refusal = (
                                422,
                                "validation",
                                "Unprocessable entity",
                                "The body is not acceptable JSON.",
                                [{"loc": ["body"], "msg": problem, "type": "json_invalid"}],
                            )
                    if refusal is not None:
                        await self._problem(scope, send_with_id, rid, *refusal)
                        return
                app_receive = _replay(raw, receive)

            try:
                await self.app(scope, app_receive, send_with_id)
            except _BodyTooLarge:
                if "started" not in status_holder:
                    await self._too_large(scope, send_with_id, rid)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            status = status_holder["status"]
            HTTP_REQUESTS.labels(scope["method"], str(status)).inc()
            if scope["path"] not in ("/healthz", "/metrics"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed_ms, 2),
                    },
                )
            request_id_var.reset(token)

    async def _too_large(self, scope, send, rid):
        await self._problem(
            scope,
            send,
            rid,
            413,
            "payload-too-large",
            "Payload too large",
            f"The request body exceeds {self.max_body_bytes} bytes.",
            None,
        )

    @staticmethod
    async def _problem(scope, send, rid, status: int, code: str, title: str, detail: str, errors) -> None:
        problem = {
            "type": f"https://meshhook.dev/problems/{code}",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
            "request_id": rid,
        }
        if errors is not None:
            problem["errors"] = errors
        body = orjson.dumps(problem)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _read_all(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(raw: bytes, receive):
    """A receive that hands the app the body read already, then waits on the client (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


def _without_body(send):
    """HEAD: the GET response's status and headers (Content-Length included), no body."""
    finished = False

    async def send_head(message):
        nonlocal finished
        if message["type"] == "http.response.start":
            await send(message)
        elif message["type"] == "http.response.body" and not finished:
            if not message.get("more_body", False):
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    return send_head


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so that FastAPI's body parsing re-raises it (it turns other errors into a 400)
    and the problem+json handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body exceeds {limit} bytes.")
