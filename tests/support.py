"""Test support: throwaway databases, a local JWKS endpoint, a local "outside world" HTTP
server, real service processes, and token minting with keys generated per session."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parents[1]
HS_SECRET = "test-hs256-secret-that-is-long-enough-for-hmac-0123456789"
SECRET_KEY = base64.b64encode(b"k" * 32).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- databases
def server_reachable(host="127.0.0.1", port=5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def admin_url(url_env: str = "TEST_DATABASE_URL", pgdata_env: str = "MESHHOOK_TEST_PGDATA",
              pgdata_default: str = ".cache/meshhook-test-pg") -> str:
    """A URL of a maintenance database: $url_env, else 127.0.0.1:5432, else an embedded server."""
    if os.environ.get(url_env):
        return os.environ[url_env]
    if server_reachable():
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    import pgserver

    data = Path(os.environ.get(pgdata_env, Path.home() / pgdata_default))
    data.mkdir(parents=True, exist_ok=True)
    srv = pgserver.get_server(str(data), cleanup_mode="stop")
    return srv.get_uri("postgres")


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(admin: str, name: str) -> str:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return with_database(admin, name)


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


# ---------------------------------------------------------------- keys and tokens
@dataclass
class Keys:
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    issuer: str = ""

    def jwks(self) -> dict:
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
        return {"keys": [ec_jwk, rsa_jwk]}

    def claims(self, sub: str, **over) -> dict:
        now = int(time.time())
        c = {"sub": sub, "role": "authenticated", "aud": "authenticated", "iss": self.issuer,
             "iat": now, "exp": now + 3600, "email": f"{sub[:8]}@example.test"}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, sub: str, alg: str = "HS256", headers: dict | None = None, **over) -> str:
        claims = self.claims(sub, **over)
        if alg == "HS256":
            return jwt.encode(claims, HS_SECRET, algorithm="HS256", headers=headers)
        if alg == "ES256":
            return jwt.encode(claims, self.ec_key, algorithm="ES256", headers={"kid": "ec-1", **(headers or {})})
        if alg == "RS256":
            return jwt.encode(claims, self.rsa_key, algorithm="RS256", headers={"kid": "rsa-1", **(headers or {})})
        raise ValueError(alg)


class JwksServer:
    """Stands in for Supabase's /auth/v1/.well-known/jwks.json on loopback."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/auth/v1/.well-known/jwks.json":
                    outer.hits += 1
                    body = json.dumps(outer.keys.jwks()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


# ---------------------------------------------------------------- the outside world
# A 1x1 PNG: its signature (0x89 "PNG" …) and binary chunks are not UTF-8.
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
BYTES_BODIES = {
    "png": (PNG_1X1, "image/png"),
    "nuljson": (b'{"name": "a\\u0000b", "list": ["\\u0000"], "key\\u0000": 1}', "application/json"),
    "nultext": (b"line one\x00line two\x00", "text/plain; charset=utf-8"),
}


class World:
    """A local HTTP server for http_call steps. Behaviour is chosen by path:

    /ok/<name>              200 JSON echo of the request (method, url as sent, headers, query, body);
                            ?status=N answers the same echo with status N
    /last/<name>            200 JSON echo of the last request made to /ok/<name> (an upstream that
                            remembers what it was sent, and tells whoever asks)
    /status/<code>/<name>   that status, JSON {"code": …}
    /flaky/<name>?fail=N    500 for the first N requests of <name>, then 200
    /gate/<name>            500 while the gate <name> is closed, 200 once opened (World.open)
    /slow/<name>?s=0.2      sleeps, then 200 (records start and end times)
    /big/<name>?kb=300      200 with a JSON body of about that many KiB
    /seq/<name>?codes=500,429&kb=N   those statuses in order (429 with Retry-After: 0), then 200;
                            kb pads every answer
    /bytes/<kind>/<name>    200 with a body a database cannot hold as is: kind `png` (a PNG image),
                            `nuljson` (JSON holding "\\u0000") or `nultext` (text/plain with NUL bytes)
    Every request is recorded with its Idempotency-Key.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.gates: dict[str, bool] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                segs = [s for s in parts.path.split("/") if s]
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                kind = segs[0] if segs else ""
                name = segs[-1] if len(segs) > 1 else ""
                started = time.time()
                with outer.lock:
                    outer.counts[name] += 1
                    n = outer.counts[name]
                rec = {"kind": kind, "name": name, "method": self.command, "path": parts.path, "query": q,
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                       "idempotency_key": self.headers.get("Idempotency-Key"), "n": n, "started": started}
                status, payload = 200, {"ok": True, "name": name, "n": n}
                if kind == "ok":
                    payload = {"method": self.command, "url": self.path, "query": q, "body": body,
                               "headers": rec["headers"], "n": n}
                    status = int(q.get("status", "200"))
                    rec["echo"] = payload
                elif kind == "last":
                    with outer.lock:
                        prior = [r for r in outer.requests if r["kind"] == "ok" and r["name"] == name]
                    payload = prior[-1]["echo"] if prior else {}
                elif kind == "status":
                    status = int(segs[1])
                    payload = {"code": status}
                elif kind == "flaky":
                    if n <= int(q.get("fail", "1")):
                        status = 500
                elif kind == "gate":
                    if not outer.gates.get(name, False):
                        status = 500
                        payload = {"error": "gate closed"}
                elif kind == "slow":
                    time.sleep(float(q.get("s", "0.2")))
                elif kind == "big":
                    payload = {"blob": "x" * (int(q.get("kb", "300")) * 1024)}
                elif kind == "seq":
                    codes = [int(c) for c in q.get("codes", "").split(",") if c]
                    status = codes[n - 1] if n <= len(codes) else 200
                    payload = {"n": n, "status": status}
                    if q.get("kb"):
                        payload["pad"] = "x" * (int(q["kb"]) * 1024)
                data, ctype = json.dumps(payload).encode(), "application/json"
                if kind == "bytes":
                    data, ctype = BYTES_BODIES[segs[1]]
                rec["ended"] = time.time()
                rec["status"] = status
                with outer.lock:
                    outer.requests.append(rec)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def open(self, name: str) -> None:
        self.gates[name] = True

    def seen(self, name: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["name"] == name]

    def close(self):
        self.httpd.shutdown()


# ---------------------------------------------------------------- service processes
def egress_allow(*servers) -> str:
    """MESHHOOK_EGRESS_ALLOW opening exactly these loopback servers (World, ...) and nothing else."""
    return ",".join(f"127.0.0.1:{s.httpd.server_address[1]}" for s in servers)


def service_env(database_url: str, supabase_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHHOOK_", "SUPABASE_"))}
    env.update({
        "DATABASE_URL": database_url, "SUPABASE_URL": supabase_url, "SUPABASE_JWT_SECRET": HS_SECRET,
        "MESHHOOK_SECRET_KEY": SECRET_KEY, "MESHHOOK_POLL_INTERVAL_S": "0.5", "MESHHOOK_LEASE_S": "3",
        "MESHHOOK_LOG_FORMAT": "json", "MESHHOOK_JWKS_MIN_REFETCH_S": "0.5", "PYTHONUNBUFFERED": "1",
        "MESHHOOK_SHUTDOWN_GRACE_S": "3",
    })
    env.update(extra)
    return env


class Proc:
    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                                  stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


def start_api(env: dict, log_path: Path, *, worker: bool = True, proc_class: type[Proc] = Proc) -> tuple[Proc, str]:
    port = free_port()
    args = ["serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
    proc = proc_class(args, env, log_path)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"service exited: {proc.text()[-3000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service did not become ready: {proc.text()[-3000:]}")


def start_worker(env: dict, log_path: Path, name: str = "w", *extra: str) -> Proc:
    return Proc(["worker", "--name", name, *extra], env, log_path)


async def wait_for(predicate, timeout: float = 15, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def new_user() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- replicas behind one address
class RoundRobinProxy:
    """A TCP proxy on loopback handing each new connection to the next of several API replicas,
    as a load balancer in front of them would."""

    def __init__(self, backends: list[str]):
        from urllib.parse import urlsplit

        self.backends = [(urlsplit(b).hostname, urlsplit(b).port) for b in backends]
        self.served = [0] * len(self.backends)
        self._next = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = self._next % len(self.backends)
        self._next += 1
        self.served[i] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backends[i])
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        async def _close():
            self.server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


class Replicas:
    """`apis` API processes (no in-process worker) and `workers` worker processes on one database URL,
    the APIs behind a RoundRobinProxy. Every process appends to the same log file."""

    def __init__(self, env: dict, log_path: Path, *, apis: int = 2, workers: int = 2):
        self.log = log_path
        self.apis: list[tuple[Proc, str]] = []
        self.workers: list[Proc] = []
        try:
            for _ in range(apis):
                self.apis.append(start_api(env, log_path, worker=False))
            for i in range(workers):
                self.workers.append(start_worker(env, log_path, f"replica-w{i}"))
            deadline = time.time() + 60
            for i, w in enumerate(self.workers):  # started = listening and claiming
                while f":replica-w{i}:" not in "".join(ln for ln in w.text().splitlines() if "worker started" in ln):
                    if w.p.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"worker replica-w{i} did not start: {w.text()[-3000:]}")
                    time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        self.proxy = RoundRobinProxy([base for _, base in self.apis])
        self.url = self.proxy.url

    @property
    def api_urls(self) -> list[str]:
        return [base for _, base in self.apis]

    def close(self) -> None:
        for p in [*self.workers, *(p for p, _ in self.apis)]:
            p.terminate()
        if hasattr(self, "proxy"):
            self.proxy.close()
