"""The benchmark's surroundings: a throwaway database, the service and worker processes it
starts, their environment, and HS256 tokens signed with the secret that environment sets."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt

ROOT = Path(__file__).resolve().parents[1]
HS_SECRET = "bench-hs256-secret-that-is-long-enough-for-hmac-0123456789"
SECRET_KEY = base64.b64encode(b"b" * 32).decode()
# Nothing listens on the discard port: HS256 tokens never need the JWKS endpoint, and the
# issuer the service expects is derived from this URL.
SUPABASE_URL = "http://127.0.0.1:9"
ISSUER = SUPABASE_URL + "/auth/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def admin_url() -> str:
    """A maintenance database: BENCH_DATABASE_URL, else 127.0.0.1:5432, else the embedded server."""
    if os.environ.get("BENCH_DATABASE_URL"):
        return os.environ["BENCH_DATABASE_URL"]
    if _reachable():
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    import pgserver

    data = Path(os.environ.get("MESHHOOK_BENCH_PGDATA", Path.home() / ".cache/meshhook-bench-pg"))
    data.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(str(data), cleanup_mode="stop").get_uri("postgres")


def with_database(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def create_database(admin: str) -> tuple[str, str]:
    name = f"meshhook_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return name, with_database(admin, name)


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def service_env(database_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHHOOK_", "SUPABASE_"))}
    env.update({
        "DATABASE_URL": database_url, "SUPABASE_URL": SUPABASE_URL, "SUPABASE_JWT_SECRET": HS_SECRET,
        "MESHHOOK_SECRET_KEY": SECRET_KEY, "MESHHOOK_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
        "MESHHOOK_SHUTDOWN_GRACE_S": "2",
    })
    env.update(extra)
    return env


def token(sub: uuid.UUID | str, ttl_s: int = 6 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": str(sub), "role": "authenticated", "aud": "authenticated", "iss": ISSUER,
                       "iat": now, "exp": now + ttl_s}, HS_SECRET, algorithm="HS256")


class Proc:
    """One `python -m app.cli …` child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                                  stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 10) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._log.close()


def start_api(env: dict, log_path: Path) -> tuple[Proc, int]:
    import httpx

    port = free_port()
    proc = Proc(["serve", "--no-worker", "--port", str(port)], env, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the API exited:\n{proc.tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"the API did not become ready:\n{proc.tail()}")


def start_worker(env: dict, log_path: Path, name: str, *, notify: bool = True) -> Proc:
    return Proc(["worker", "--name", name] + ([] if notify else ["--no-notify"]), env, log_path)
