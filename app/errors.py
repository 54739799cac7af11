"""Typed domain errors and the one handler that turns every error into RFC 9457 problem+json."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import orjson

log = logging.getLogger("meshhook.errors")

PROBLEM_BASE = "https://meshhook.dev/problems/"


class DomainError(Exception):
    status = 400
    code = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None, *, token_sent: bool = True, **extra: Any):
        # RFC 6750 §3.1: no error code when the request carried no token at all.
        challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge}, **extra)


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(DomainError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(DomainError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(DomainError):
    status, code, title = 422, "unprocessable", "Unprocessable entity"


class DatabaseUnavailable(DomainError):
    status, code, title = 503, "database-unavailable", "Database unavailable"

    def __init__(self, detail: str | None = None):
        super().__init__(detail or "The database cannot be reached; try again shortly.", headers={"Retry-After": "1"})


def problem_response(
    request: Request | None,
    status: int,
    title: str,
    detail: str,
    code: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    rid = getattr(request.state, "request_id", None) if request is not None else None
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path if request is not None else None,
        "request_id": rid,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(
        orjson.dumps(body, default=str), status_code=status, media_type="application/problem+json", headers=headers
    )


_HTTP_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("unprocessable", "Unprocessable entity"),
    503: ("unavailable", "Service unavailable"),
}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        out.append(item)
    return out


def _allowed_methods(request: Request) -> list[str]:
    from starlette.routing import Match

    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    if "GET" in allowed:
        allowed.insert(1, "HEAD")  # the middleware serves HEAD wherever GET works
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        return problem_response(request, exc.status, exc.title, exc.detail, exc.code, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return problem_response(
            request,
            422,
            "Unprocessable entity",
            "The request is not valid.",
            "validation",
            errors=_validation_errors(exc),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI answers 400 when a body cannot even be decoded (e.g. not UTF-8); report it like any
            # other malformed body, as the documented 422.
            return problem_response(
                request,
                422,
                "Unprocessable entity",
                "The body is not valid JSON.",
                "validation",
                errors=[{"loc": ["body"], "msg": "invalid JSON", "type": "json_invalid"}],
            )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # The router names only the first route that matched the path; list every method it serves.
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        code, title = _HTTP_CODES.get(exc.status_code, ("error", "Error"))
        return problem_response(request, exc.status_code, title, str(exc.detail or title), code, headers)

    @app.exception_handler(asyncpg.exceptions.UniqueViolationError)
    async def _unique(request: Request, exc: Exception):
        return problem_response(request, 409, "Conflict", "The resource already exists.", "conflict")

    @app.exception_handler(asyncpg.exceptions.IntegrityConstraintViolationError)
    async def _integrity(request: Request, exc: Exception):
        # A constraint caught what validation should have: still the client's 409, but worth a look.
        log.warning("integrity error", extra={"path": request.url.path, "error": type(exc).__name__})
        return problem_response(request, 409, "Conflict", "The request conflicts with the stored data.", "conflict")

    @app.exception_handler(asyncpg.exceptions.InsufficientPrivilegeError)
    async def _rls(request: Request, exc: Exception):
        # Row-level security refused a write the service checks should have caught.
        return problem_response(request, 403, "Forbidden", "Not allowed.", "forbidden")

    @app.exception_handler(asyncpg.exceptions.DataError)
    async def _data(request: Request, exc: Exception):
        return problem_response(
            request, 422, "Unprocessable entity", "A value is out of range or malformed.", "unprocessable"
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        from app.db.engine import is_db_unavailable

        if is_db_unavailable(exc):
            return problem_response(
                request,
                503,
                "Database unavailable",
                "The database cannot be reached; try again shortly.",
                "database-unavailable",
                {"Retry-After": "1"},
            )
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem_response(request, 500, "Internal server error", "An unexpected error occurred.", "internal")
