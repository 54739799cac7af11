"""http_call: one HTTP request with retries (exponential backoff with full jitter) on connect
errors, timeouts, 408, 429 and 5xx; other 4xx fail at once. Every try carries the same
Idempotency-Key, so a receiver can deduplicate retries and crash re-sends."""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Awaitable, Callable

import httpx
import orjson

from app.engine.steps import StepOutcome
from app.engine.steps.bodies import decode_body

RETRY_STATUS = {408, 429}
MAX_BODY_READ = 4 * 1024 * 1024
ERROR_BODY_BYTES = 2048  # errors (and every retry's attempt entry) keep a preview, not the whole body


def _error_body(body: Any) -> Any:
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    if len(raw) <= ERROR_BODY_BYTES:
        return body
    return raw[:ERROR_BODY_BYTES].decode("utf-8", errors="ignore") + "…"


def _backoff(attempt: int, base: float, cap: float, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), cap)
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * (2 ** (attempt - 1))))


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


async def execute(client: httpx.AsyncClient, config: dict, idempotency_key: str,
                  on_attempt: Callable[[int, dict], Awaitable[None]]) -> StepOutcome:
    method = config.get("method", "GET").upper()
    retry = config.get("retry") or {}
    max_attempts = int(retry.get("max_attempts", 3))
    base, cap = float(retry.get("backoff_s", 1)), float(retry.get("max_backoff_s", 30))
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()
               if str(k).lower() != "idempotency-key"}  # ours is the one that counts
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
    error: dict[str, Any] = {}
    for attempt in range(1, max_attempts + 1):
        started = time.time()
        retry_after = None
        try:
            async with client.stream(method, str(config["url"]), headers=headers, params=query,
                                     timeout=timeout, **kwargs) as resp:
                content, cut = await _read_capped(resp)
        except httpx.TimeoutException as exc:
            error = {"type": "timeout", "message": f"no response within {timeout} s ({type(exc).__name__})"}
        except httpx.TransportError as exc:
            error = {"type": "connect_error", "message": str(exc) or type(exc).__name__}
        except httpx.HTTPError as exc:
            return StepOutcome("failed", error={"type": "request_error", "message": str(exc) or type(exc).__name__})
        else:
            out = {"status": resp.status_code, "headers": dict(resp.headers), "body": _parse_body(resp, content, cut)}
            if cut:
                out["body_truncated"] = True
            if resp.status_code < 400:
                return StepOutcome("succeeded", out)
            error = {"type": "http_error", "message": f"HTTP {resp.status_code}", "status": resp.status_code,
                     "body": _error_body(out["body"])}
            if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                return StepOutcome("failed", out, error)
            retry_after = resp.headers.get("retry-after")
        if attempt < max_attempts:
            wait = _backoff(attempt, base, cap, retry_after)
            await on_attempt(attempt, {"attempt": attempt, "started_at": started, "error": error, "retry_in_s": round(wait, 3)})
            await asyncio.sleep(wait)
    return StepOutcome("failed", error=error)
