"""The benchmark's surroundings: a throwaway database, the service and worker processes it
starts, their environment, and HS256 tokens signed with the secret that environment sets."""
from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path

import jwt

from tests import support
from tests.support import drop_database  # noqa: F401 - the runner calls env.drop_database

ROOT = Path(__file__).resolve().parents[1]
HS_SECRET = "bench-hs256-secret-that-is-long-enough-for-hmac-0123456789"
SECRET_KEY = base64.b64encode(b"b" * 32).decode()
# Nothing listens on the discard port: HS256 tokens never need the JWKS endpoint, and the
# issuer the service expects is derived from this URL.
SUPABASE_URL = "http://127.0.0.1:9"
ISSUER = SUPABASE_URL + "/auth/v1"


def admin_url() -> str:
    """A maintenance database: BENCH_DATABASE_URL, else 127.0.0.1:5432, else the embedded server."""
    return support.admin_url("BENCH_DATABASE_URL", "MESHHOOK_BENCH_PGDATA", ".cache/meshhook-bench-pg")


async def create_database(admin: str) -> tuple[str, str]:
    name = f"meshhook_bench_{uuid.uuid4().hex[:10]}"
    return name, await support.create_database(admin, name)


def service_env(database_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHHOOK_", "SUPABASE_"))}
    env.update({
        "DATABASE_URL": database_url, "SUPABASE_URL": SUPABASE_URL, "SUPABASE_JWT_SECRET": HS_SECRET,
        "MESHHOOK_SECRET_KEY": SECRET_KEY, "MESHHOOK_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
        "MESHHOOK_SHUTDOWN_GRACE_S": "2",
        # The benchmark's upstreams run on loopback; tenant calls are public-only otherwise (§9.1).
        "MESHHOOK_EGRESS_ALLOW": "127.0.0.0/8",
    })
    env.update(extra)
    return env


def token(sub: uuid.UUID | str, ttl_s: int = 6 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": str(sub), "role": "authenticated", "aud": "authenticated", "iss": ISSUER,
                       "iat": now, "exp": now + ttl_s}, HS_SECRET, algorithm="HS256")


class Proc(support.Proc):
    """A service or worker process of the benchmark (the tests' process wrapper, plus a few reads)."""

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.text()[-n:]

    def stop(self, timeout: float = 10) -> None:
        self.terminate(timeout)
        self.log.close()


def start_api(env: dict, log_path: Path) -> tuple[Proc, int]:
    proc, base = support.start_api(env, log_path, worker=False, proc_class=Proc)
    return proc, int(base.rsplit(":", 1)[1])


def start_worker(env: dict, log_path: Path, name: str, *, notify: bool = True) -> Proc:
    return Proc(["worker", "--name", name] + ([] if notify else ["--no-notify"]), env, log_path)
