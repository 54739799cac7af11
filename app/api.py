"""Shared pieces of the HTTP layer: the database dependency and documented error responses."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from app.db.engine import Database
from app.secrets.crypto import Cipher


class Problem(BaseModel):
    """RFC 9457 problem details, shared by every error response."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://meshhook.dev/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "No such run.",
                    "instance": "/runs/8c1d…",
                    "request_id": "5f0c…",
                }
            ]
        },
    )
    type: str = Field(description="A URI naming the kind of problem, e.g. `…/problems/not-found`")
    title: str
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(description="What went wrong, for a human")  # always sent
    instance: str | None = Field(description="The request path")
    request_id: str | None = Field(description="Also in the `X-Request-ID` response header and the logs")
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="422: every problem, each with `loc` (where) and `msg` (and `node`/`field` for "
        "workflow definitions)",
    )
    eligible_steps: list[str] | None = Field(default=None, description="409/422 from resume: steps one can resume from")
    active_run_id: str | None = Field(default=None, description="409 from resume: the resumed run already in flight")
    resolved_by: str | None = Field(
        default=None,
        description="409 from resume: the run that already finished this "
        'run\'s work (send `"rerun": true` to run it again)',
    )
    rerunnable_steps: list[str] | None = Field(
        default=None, description='409/422 from resume: steps a resume with `"rerun": true` may start from'
    )
    matched: int | None = Field(default=None, description="422 from bulk resume: how many runs the filter matched")


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid bearer token (or webhook signature)",
    403: "The caller's role is too low",
    404: "Not found, or not visible to the caller",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Validation failed; `errors` lists every problem",
    503: "The database is unavailable; retry",
}


_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer` when no token was sent, else `Bearer error="invalid_token"` (RFC 6750)',
            "schema": {"type": "string"},
        }
    },
    503: {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}},
}


def errors_for(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Documented error responses: problem+json only (no `model`, which would add an application/json twin);
    app.main adds the `Problem` schema to the spec's components."""
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        out[c] = {
            "description": _DESCRIPTIONS[c],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if c in _HEADERS:
            out[c]["headers"] = _HEADERS[c]
    return out


# Documents `Authorization: Bearer <jwt>` in the spec; app.auth.dependencies.current_user verifies it.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="A Supabase access token (ES256/RS256 via JWKS, or legacy HS256).",
)


_CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


async def canonical_path_ids(request: Request) -> None:
    """Path ids are UUIDs in the 8-4-4-4-12 form the spec's `format: uuid` means; Python alone would also take
    `urn:uuid:…`, `{…}` or 32 bare hex digits. Runs before the route's own parameters are parsed."""
    bad = [
        name for name, value in request.path_params.items() if name.endswith("_id") and not _CANONICAL_UUID.match(value)
    ]
    if bad:
        raise RequestValidationError(
            [
                {
                    "loc": ("path", name),
                    "msg": "must be a UUID in the 8-4-4-4-12 form",
                    "type": "uuid_parsing",
                    "input": request.path_params[name],
                }
                for name in bad
            ]
        )


async def get_db(request: Request) -> Database:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on every request
    return request.app.state.db


DbDep = Annotated[Database, Depends(get_db)]


async def get_cipher(request: Request):
    return request.app.state.cipher


CipherDep = Annotated[Cipher, Depends(get_cipher)]


# The query and header parameters of every events endpoint (JSON list or SSE stream).
EventsAfter = Annotated[int, Query(ge=0, le=2**62)]
EventsLimit = Annotated[int, Query(ge=1, le=1000)]
LastEventId = Annotated[
    str | None, Header(pattern=r"^[0-9]{1,18}$", description="Resume the stream after this event id")
]


def wants_event_stream(accept: str) -> bool:
    """Content negotiation (RFC 9110 §12.5.1): the stream when text/event-stream is acceptable (q > 0) and
    preferred at least as much as JSON; `text/event-stream;q=0, application/json` is JSON."""
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        weights[media] = max(weights.get(media, 0.0), q) if media in weights else q
    sse = weights.get("text/event-stream", 0.0)
    json = max((weights[m] for m in ("application/json", "application/*", "*/*") if m in weights), default=0.0)
    return sse > 0 and sse >= json
