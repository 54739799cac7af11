"""Helpers for engine tests: run a definition end to end, read events, and a small HTTP
server that answers a scripted sequence of status codes (429, 408, … then 200)."""
from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Client


def uniq(prefix: str = "n") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def node(key: str, type_: str, config: dict | None = None) -> dict:
    return {"id": key, "data": {"type": type_, "config": config or {}}}


def edge(source: str, target: str, handle: str | None = None) -> dict:
    e = {"source": source, "target": target}
    if handle is not None:
        e["sourceHandle"] = handle
    return e


async def run_definition(client: Client, definition: dict, input: dict | None = None, timeout: float = 20,
                         project_id: str | None = None) -> dict:
    project_id = project_id or await client.project()
    wf = await client.workflow(project_id, definition)
    run_id = await client.start(wf["id"], input or {})
    return await client.wait(run_id, timeout=timeout)


async def events(client: Client, run_id: str) -> list[dict]:
    r = await client.get(f"/runs/{run_id}/events")
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def step_detail(client: Client, run_id: str, key: str) -> dict:
    r = await client.get(f"/runs/{run_id}/steps/{key}")
    assert r.status_code == 200, r.text
    return r.json()


class Script:
    """GET/POST /seq/<name>?codes=429,408,500 answers those codes in order, then 200;
    &kb=N pads every answer to about N KiB."""

    def __init__(self):
        self.seen: dict[str, list[dict]] = defaultdict(list)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                parts = urlsplit(self.path)
                name = parts.path.rstrip("/").split("/")[-1]
                query = parse_qs(parts.query)
                codes = [int(c) for c in query.get("codes", [""])[0].split(",") if c]
                pad = "x" * (int(query.get("kb", ["0"])[0]) * 1024)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                with outer.lock:
                    n = len(outer.seen[name])
                    outer.seen[name].append({"idempotency_key": self.headers.get("Idempotency-Key")})
                status = codes[n] if n < len(codes) else 200
                data = json.dumps({"n": n + 1, "status": status, **({"pad": pad} if pad else {})}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="session")
def script():
    s = Script()
    yield s
    s.close()


FAST_RETRY = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
