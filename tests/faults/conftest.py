"""Fault and load suite fixtures: a private PostgreSQL server (from the `pgserver` wheel's
binaries) that the tests may stop and restart at will, a migrated database on it, an API
process without a worker, and helpers to start workers and record the measured figures.

The server listens on 127.0.0.1 on a free port with trust authentication. PostgreSQL refuses
to run as root, so under root (CI) its commands run as the unprivileged `pgserver` system
user, the one the `pgserver` package itself creates and uses."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.db.engine import init_connection
from tests import support
from tests.conftest import Client

RESULTS_FILE = Path(__file__).with_name("last_results.json")
MAX_BODY_BYTES = 1_048_576
SYSTEM_USER = "pgserver"


class PrivatePostgres:
    """One PostgreSQL cluster in a temporary directory, owned by this test session."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # platformdirs complains about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.base = Path(tempfile.mkdtemp(prefix="meshhook-faults-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.sock.mkdir()
        self.port = support.free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self._prepare_for_system_user()

    def _prepare_for_system_user(self) -> None:
        """What pgserver does under root: a system user, traversable prefixes, readable binaries."""
        import stat

        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        self.user = SYSTEM_USER
        ensure_prefix_permissions(self.base)
        ensure_prefix_permissions(self.bin)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(self.bin, read | execute)
        ensure_folder_permissions(self.bin.parent / "lib", read)
        for path in (self.base, self.sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.base.chmod(0o755)

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        # Output goes to a file, not a pipe: the postmaster would inherit a pipe and keep it open.
        with open(self.base / "commands.log", "ab") as out:
            subprocess.run([str(self.bin / program), *args], check=True, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, cwd=self.base, user=self.user, timeout=timeout)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "--auth-local=trust", "--encoding=utf8",
                  "-U", "postgres", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# meshhook fault suite\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sock}'\nmax_connections = 300\n"
                # A throwaway cluster: durability against power loss buys nothing here. A restart
                # (fast shutdown) still writes everything out.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def cleanup(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pg():
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture(scope="session")
async def faults_db_url(private_pg) -> str:
    url = await support.create_database(private_pg.url(), "meshhook_faults")
    from app.db.migrate import upgrade

    await asyncio.to_thread(upgrade, url)
    return url


@pytest.fixture(scope="session")
def world():
    """The outside world for this suite, in place of the session one. Workers are killed in the
    middle of requests here, so the server's tracebacks about broken pipes are silenced."""
    w = support.World()
    w.httpd.handle_error = lambda request, client_address: None
    yield w
    w.close()


@pytest.fixture(scope="session")
def faults_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-logs")


@pytest.fixture(scope="session")
def faults_env(faults_db_url, jwks_server, world) -> dict:
    """Service environment on the private database, with the shipped database timeouts (a stopped
    server refuses connections, so its 503 is immediate whatever the connect timeout). The lease is
    the ordinary test lease; the crash test shortens it."""
    return support.service_env(
        faults_db_url, jwks_server.url,
        MESHHOOK_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        MESHHOOK_LOG_LEVEL="WARNING",
        MESHHOOK_EGRESS_ALLOW=support.egress_allow(world),
    )


class Service:
    def __init__(self, proc: support.Proc, url: str):
        self.proc, self.url = proc, url

    @property
    def pid(self) -> int:
        return self.proc.p.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start_service(env: dict, log: Path, *, worker: bool) -> Service:
    proc, url = support.start_api(env, log, worker=worker)
    return Service(proc, url)


@pytest.fixture(scope="session")
def faults_api(faults_env, faults_logs):
    """The API without a worker: in this suite workers are separate processes the tests control."""
    svc = start_service(faults_env, faults_logs / "api.log", worker=False)
    yield svc
    svc.proc.terminate()


@pytest.fixture(scope="session")
async def faults_db(faults_db_url):
    """A superuser pool on the private database, for assertions (bypasses RLS)."""
    pool = await asyncpg.create_pool(faults_db_url, min_size=1, max_size=4, init=init_connection)
    yield pool
    await pool.close()


@pytest.fixture
def procs():
    """Processes a test starts; whatever is still alive at the end is killed."""
    started: list[support.Proc] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
async def make_user(faults_api, keys):
    made: list[Client] = []

    def make(base: str | None = None) -> Client:
        c = Client(base or faults_api.url, keys)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


def start_worker(env: dict, logs: Path, name: str, **extra: str) -> support.Proc:
    return support.start_worker({**env, **extra}, logs / f"worker-{name}-{uuid.uuid4().hex[:6]}.log", name)


async def final_statuses(db, run_ids: list[str]) -> dict[str, str]:
    rows = await db.fetch("select id::text, status from runs where id = any($1::uuid[])", run_ids)
    return {r["id"]: r["status"] for r in rows}


async def wait_final(db, run_ids: list[str], timeout: float, what: str = "runs") -> dict[str, str]:
    final = {"succeeded", "failed", "cancelled"}

    async def check():
        st = await final_statuses(db, run_ids)
        return st if len(st) == len(run_ids) and all(s in final for s in st.values()) else None

    try:
        return await support.wait_for(check, timeout, 0.2, f"{what} to finish")
    except AssertionError:
        st = await final_statuses(db, run_ids)
        stuck = {k: v for k, v in st.items() if v not in final}
        raise AssertionError(f"{len(stuck)} of {len(run_ids)} {what} not final after {timeout} s: "
                             f"{list(stuck.items())[:10]}") from None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def record(section: str, **figures) -> None:
    """Print the figures and keep them in tests/faults/last_results.json for the closing note."""
    figures = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    print(f"\n[faults] {section}: " + json.dumps(figures, default=str), flush=True)
    try:
        data = json.loads(RESULTS_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    data[section] = figures
    try:
        RESULTS_FILE.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as exc:  # a read-only checkout: the printed line is the record
        print(f"[faults] cannot write {RESULTS_FILE}: {exc}", flush=True)


def is_problem(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return body.get("status") == r.status_code and "type" in body and "title" in body
