"""A hostile-but-honest outside world for the fault tests and the benchmark: an upstream that
trickles its body, one that asks to be retried much later, and one that answers at once. Every
request is logged (its Idempotency-Key, when it arrived, when it ended and how), so tests can
compare the requests actually sent with what the engine stored.

    /trickle/<name>?bytes=60&every=1   200, Content-Length `bytes`, then one byte every `every` s
    /retry/<name>?after=60             429 with `Retry-After: <after>`
    /slow/<name>?s=0.3                 sleeps, then 200
    /flaky/<name>?fail=1               500 for the first `fail` requests of each Idempotency-Key, then 200
    /nul/<name>                        200 JSON whose text holds NUL ("a\u0000b")
    /ok/<name>                         200 {"ok": true, "n": <count for name>}
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class SlowUpstream:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.per_key: dict[str | None, int] = defaultdict(int)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                self._handle()

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                segs = [s for s in parts.path.split("/") if s]
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                kind = segs[0] if segs else ""
                name = segs[-1] if len(segs) > 1 else ""
                with outer.lock:
                    outer.counts[name] += 1
                    n = outer.counts[name]
                rec = {"kind": kind, "name": name, "n": n, "started": time.time(),
                       "idempotency_key": self.headers.get("Idempotency-Key"), "completed": False}
                with outer.lock:
                    outer.requests.append(rec)
                try:
                    if kind == "trickle":
                        size, every = int(q.get("bytes", "60")), float(q.get("every", "1"))
                        self.send_response(200)
                        self.send_header("Content-Type", "text/plain")
                        self.send_header("Content-Length", str(size))
                        self.end_headers()
                        self.wfile.flush()
                        for _ in range(size):
                            time.sleep(every)
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        rec["status"] = 200
                    elif kind == "slow":
                        time.sleep(float(q.get("s", "0.3")))
                        self._json(200, {"ok": True, "n": n})
                        rec["status"] = 200
                    elif kind == "flaky":
                        key = rec["idempotency_key"]
                        with outer.lock:
                            outer.per_key[key] += 1
                            k = outer.per_key[key]
                        rec["status"] = 500 if k <= int(q.get("fail", "1")) else 200
                        self._json(rec["status"], {"n": k})
                    elif kind == "nul":
                        rec["status"] = 200
                        data = b'{"text": "a\\u0000b"}'
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                    elif kind == "retry":
                        self._json(429, {"n": n}, {"Retry-After": q.get("after", "60")})
                        rec["status"] = 429
                    else:
                        self._json(200, {"ok": True, "n": n})
                        rec["status"] = 200
                    rec["completed"] = True
                except OSError:  # the client went away (an aborted request)
                    rec["aborted"] = True
                finally:
                    rec["ended"] = time.time()

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # a hundred slow runs connect at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def seen(self, name: str) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.requests if r["name"] == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
