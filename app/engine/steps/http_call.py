"""http_call: one HTTP request per attempt; connect errors, timeouts, 408, 429 and 5xx are
retryable (exponential backoff with full jitter, or `Retry-After`), other 4xx fail at once. The
driver owns the retry loop: the wait between attempts is durable (the run sleeps in the database).
Every try carries the same Idempotency-Key, so a receiver can deduplicate retries and crash re-sends."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from app.egress.transport import EgressDenied
from app.engine.steps import StepOutcome
from app.engine.steps.bodies import decode_body
from app.secrets.redaction import Redactor

RETRY_STATUS = {408, 429}
MAX_BODY_READ = 4 * 1024 * 1024
ERROR_BODY_BYTES = 2048  # errors (and every retry's attempt entry) keep a preview, not the whole body


def _error_body(body: Any, redactor: Redactor) -> Any:
    body = redactor.redact(body)  # before the cut, so the cut can only go through a mask (§9.2)
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    if len(raw) <= ERROR_BODY_BYTES:
        return body
    return raw[:ERROR_BODY_BYTES].decode("utf-8", errors="ignore") + "…"


def backoff_s(config: dict, failures: int, retry_after: str | None) -> float:
    """The wait before the next attempt after `failures` failed ones: `Retry-After` (seconds or an
    HTTP date) when the upstream sent one, else exponential with full jitter; never past
    `max_backoff_s`."""
    retry = config.get("retry") or {}
    base, cap = float(retry.get("backoff_s", 1)), float(retry.get("max_backoff_s", 30))
    if retry_after:
        try:
            return max(0.0, min(float(retry_after), cap))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(retry_after)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, min((when - datetime.now(UTC)).total_seconds(), cap))
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return random.uniform(0, min(cap, base * (2 ** max(failures - 1, 0))))


def max_attempts(config: dict) -> int:
    return int((config.get("retry") or {}).get("max_attempts", 3))


async def _read_capped(resp: httpx.Response) -> tuple[bytes, bool]:
    """At most MAX_BODY_READ bytes: a huge response must not sink the worker's memory."""
    chunks, size = [], 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_READ:
            return b"".join(chunks)[:MAX_BODY_READ], True
    return b"".join(chunks), False


def _parse_body(resp: httpx.Response, content: bytes, cut: bool) -> Any:
    return decode_body(content, resp.headers.get("content-type", ""), cut)


@dataclass
class AttemptResult:
    """One request's end: a settled outcome, or a retryable failure (the driver decides whether and
    when the next attempt goes out; the wait is durable)."""

    outcome: StepOutcome
    retryable: bool = False
    retry_after: str | None = None


async def attempt(
    client: httpx.AsyncClient, config: dict, idempotency_key: str, *, redactor: Redactor = Redactor(())
) -> AttemptResult:
    """Send the request once. `timeout_s` bounds the whole attempt: connect, send and reading the
    whole body (at most MAX_BODY_READ bytes); past it the attempt is a `timeout` (retryable)."""
    method = config.get("method", "GET").upper()
    headers = {
        str(k): str(v) for k, v in (config.get("headers") or {}).items() if str(k).lower() != "idempotency-key"
    }  # ours is the one that counts
    headers["Idempotency-Key"] = idempotency_key
    query = {str(k): str(v) for k, v in (config.get("query") or {}).items()} or None
    body = config.get("body")
    kwargs: dict[str, Any] = {}
    if body is not None and method not in ("GET", "HEAD"):
        if isinstance(body, (dict, list)):
            kwargs["content"] = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        else:
            kwargs["content"] = str(body).encode()
    timeout = float(config.get("timeout_s", 30))
    try:
        async with asyncio.timeout(timeout):  # the whole attempt, not each read
            async with client.stream(
                method, str(config["url"]), headers=headers, params=query, timeout=timeout, **kwargs
            ) as resp:
                content, cut = await _read_capped(resp)
    except EgressDenied as exc:  # a policy decision, not a network fault: fail at once, never retry
        return AttemptResult(StepOutcome("failed", error={"type": "egress_denied", "message": str(exc)}))
    except (TimeoutError, httpx.TimeoutException) as exc:
        return AttemptResult(
            StepOutcome(
                "failed",
                error={
                    "type": "timeout",
                    "message": f"the attempt did not complete within {timeout:g} s ({type(exc).__name__})",
                },
            ),
            retryable=True,
        )
    except httpx.TransportError as exc:
        return AttemptResult(
            StepOutcome("failed", error={"type": "connect_error", "message": str(exc) or type(exc).__name__}),
            retryable=True,
        )
    except httpx.HTTPError as exc:
        return AttemptResult(
            StepOutcome("failed", error={"type": "request_error", "message": str(exc) or type(exc).__name__})
        )
    out = {"status": resp.status_code, "headers": dict(resp.headers), "body": _parse_body(resp, content, cut)}
    if cut:
        out["body_truncated"] = True
    if resp.status_code < 400:
        return AttemptResult(StepOutcome("succeeded", out))
    error = {
        "type": "http_error",
        "message": f"HTTP {resp.status_code}",
        "status": resp.status_code,
        "body": _error_body(out["body"], redactor),
    }
    if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
        return AttemptResult(StepOutcome("failed", out, error))
    return AttemptResult(StepOutcome("failed", out, error), retryable=True, retry_after=resp.headers.get("retry-after"))
