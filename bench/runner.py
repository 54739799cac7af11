"""The benchmark phases (issue 7, DESIGN §8): resume over real HTTP with real JWTs at 1 and 32
clients and at 10/100/1,000 steps, the same resume SQL through bare asyncpg (the floor),
pickup latency with LISTEN/NOTIFY and with polling only, and worker throughput with one and
two worker processes. Everything runs against a throwaway database that is dropped at the end."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import env
from bench.floor import RawResume, RecordedResume
from bench.http import Connection
from bench.seed import Seeder, grow_history, grow_queue, init_json
from bench.stats import pct, r

FINAL = ("succeeded", "failed", "cancelled")
NUMERIC_KEYS = (
    "resume_p50_ms", "resume_p99_ms", "resumes_per_s", "resume_c1_p50_ms", "resume_c1_p99_ms",
    "resume_1000_steps_p99_ms", "pickup_p50_ms", "pickup_p99_ms", "pickup_poll_only_p99_ms",
    "worker_steps_per_s_1", "worker_steps_per_s_2", "floor_resume_p99_ms", "floor_resumes_per_s",
    "resume_pooler_p50_ms",
    "floor_raw_c1_p50_ms", "floor_raw_c1_p99_ms", "floor_raw_per_s", "resume_worker_c1_p50_ms",
    "resume_worker_c1_p99_ms", "resume_worker_per_s", "resume_deep_queue_c1_p50_ms", "resume_deep_queue_c1_p99_ms",
    "resume_grown_p50_ms", "resume_grown_p99_ms", "ratio_resume_grown_p50", "ratio_resume_grown_p99",
    "runs_list_p50_ms", "runs_list_grown_p50_ms", "ratio_resume_c1_p99_to_floor_raw",
    "bulk_resumes_per_s",
    "fair_pickup_p99_ms",
)


@dataclass
class Sizes:
    c1_warm: int
    c1: int
    c32_warm: int
    c32: int
    scale_warm: int
    scale: dict[int, int]
    pickup: int
    poll: int
    poll_interval_s: float
    drain_warm: int
    drain: int
    worker_c32: int  # resumes at 32 clients while a worker drains the children
    lists: int  # GET /runs?project_id=&limit=50 requests per list phase
    other_projects: int  # the grown database: other tenants' projects (5 members each) ...
    other_queued: int  # ... their queued runs (the deep queue), 10 pending steps each ...
    other_finished: int  # ... and their finished 10-step runs
    member_of: int  # how many of them the resuming user is a viewer of
    bulk: int  # runs in the bulk resume phase
    concurrency: int = 32
    fair_slow: int = 100  # tenant B's slow (trickling) runs
    fair_probes: int = 40  # tenant A's one-step runs, one at a time, while B's are in flight
    fail_at: dict[int, int] = field(default_factory=lambda: {10: 5, 100: 50, 1000: 500})


FULL = Sizes(c1_warm=50, c1=500, c32_warm=256, c32=4000, scale_warm=5, scale={10: 200, 100: 100, 1000: 60},
             pickup=200, poll=40, poll_interval_s=0.5, drain_warm=32, drain=500, worker_c32=2000, lists=300,
             other_projects=2000, other_queued=20_000, other_finished=200_000, member_of=200, bulk=1000)
QUICK = Sizes(c1_warm=5, c1=20, c32_warm=32, c32=96, scale_warm=1, scale={10: 10, 100: 5, 1000: 3},
              pickup=10, poll=4, poll_interval_s=0.2, drain_warm=4, drain=30, worker_c32=64, lists=20,
              other_projects=20, other_queued=200, other_finished=2000, member_of=20, bulk=200, fair_probes=8)


# ---------------------------------------------------------------- small measurements
def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy() -> tuple[int, int]:
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals) - idle, sum(vals)
    except (OSError, ValueError, IndexError):
        return 0, 0


class Meter:
    """Over a phase: wall time; CPU seconds of this process (the load generator), of the API
    process and of the PostgreSQL backends serving `app_name`; the whole machine's busy share.
    CPU seconds divided by the operations done give a cost per operation that the noise of a
    shared machine distorts far less than latency does."""

    def __init__(self, conn: asyncpg.Connection | None = None, db_name: str | None = None,
                 app_name: str | None = None, api_pid: int | None = None):
        self.conn, self.db_name, self.app_name, self.api_pid = conn, db_name, app_name, api_pid

    async def _backends(self) -> set[int]:
        if self.conn is None or self.app_name is None:
            return set()
        rows = await self.conn.fetch("select pid from pg_stat_activity where datname = $1 and application_name = $2",
                                     self.db_name, self.app_name)
        return {r["pid"] for r in rows}

    async def _sample(self) -> None:
        for p in await self._backends():
            self.pg_last[p] = _proc_cpu_s(p)
            self.pg0.setdefault(p, 0.0)  # appeared during the phase: counts whole

    async def _sampler(self) -> None:
        while True:  # remembers backends an overflowing pool closes before the phase ends
            await asyncio.sleep(0.25)
            await self._sample()

    async def __aenter__(self):
        self.pg0 = {p: _proc_cpu_s(p) for p in await self._backends()}
        self.pg_last = dict(self.pg0)
        self._task = asyncio.create_task(self._sampler()) if self.app_name else None
        self.api0 = _proc_cpu_s(self.api_pid) if self.api_pid else 0.0
        self.m0 = _machine_busy()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    async def __aexit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.client_cpu_s = time.process_time() - self.cpu0
        self.api_cpu_s = (_proc_cpu_s(self.api_pid) - self.api0) if self.api_pid else float("nan")
        m1 = _machine_busy()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self._sample()
        self.pg_cpu_s = sum(self.pg_last[p] - self.pg0[p] for p in self.pg_last)
        self.pg_backends = len(self.pg_last)
        total = m1[1] - self.m0[1]
        self.machine_busy = (m1[0] - self.m0[0]) / total if total else float("nan")
        self.client_cpu = self.client_cpu_s / self.wall
        self.api_cpu = self.api_cpu_s / self.wall
        return False

    def per_op_ms(self, n: int) -> dict:
        n = max(n, 1)
        return {"client_cpu_ms": self.client_cpu_s / n * 1e3, "api_cpu_ms": self.api_cpu_s / n * 1e3,
                "pg_cpu_ms": self.pg_cpu_s / n * 1e3}


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=env.ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "migrations"], cwd=env.ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------- the bench
class Bench:
    def __init__(self, sizes: Sizes, workdir: Path, log=print, py_spy: Path | None = None,
                 extra_env: dict[str, str] | None = None):
        self.s = sizes
        self.extra_env = dict(extra_env or {})
        self.dir = workdir
        self.log = log
        self.py_spy = py_spy
        self.results: dict = {}
        self.procs: list[env.Proc] = []

    # ---- setup ----------------------------------------------------------------------
    async def setup(self) -> None:
        self.admin = env.admin_url()
        self.db_name, self.url = await env.create_database(self.admin)
        from app.db.migrate import upgrade

        await asyncio.to_thread(upgrade, self.url)
        self.conn = await asyncpg.connect(self.url)
        await init_json(self.conn)
        self.seed = Seeder(self.conn)
        await self.seed.project_with_editors(self.s.concurrency)
        for n in (10, 100, 1000):
            await self.seed.workflow(n)
        self.tokens = [env.token(u) for u in self.seed.editors]
        self.claims = [{"sub": str(u), "role": "authenticated", "aud": "authenticated", "iss": env.ISSUER}
                       for u in self.seed.editors]
        s = self.s
        t0 = time.perf_counter()
        fa = s.fail_at
        self.parents = {
            "c1": await self.seed.failed_parents(10, s.c1_warm + s.c1, fa[10]),
            "c32": await self.seed.failed_parents(10, s.c32_warm + s.c32, fa[10]),
            "floor_record": await self.seed.failed_parents(10, 2, fa[10]),
            "floor_c1": await self.seed.failed_parents(10, s.c1_warm + s.c1, fa[10]),
            "floor_c32": await self.seed.failed_parents(10, s.c32_warm + s.c32, fa[10]),
            "raw_c1": await self.seed.failed_parents(10, s.c1_warm + s.c1, fa[10]),
            "raw_c32": await self.seed.failed_parents(10, s.c32_warm + s.c32, fa[10]),
            "worker_c1": await self.seed.failed_parents(10, s.c1_warm + s.c1, fa[10]),
            "worker_c32": await self.seed.failed_parents(10, s.c32_warm + s.worker_c32, fa[10]),
            "pickup": await self.seed.failed_parents(10, s.pickup + 2, fa[10]),
            "poll": await self.seed.failed_parents(10, s.poll + 1, fa[10]),
            "bulk": await self.seed.failed_parents(10, s.bulk, fa[10]),
        }
        self.parents["pooler"] = await self.seed.failed_parents(10, 2 * (s.c1_warm + s.c1), fa[10])
        for n, count in s.scale.items():
            self.parents[f"scale{n}"] = await self.seed.failed_parents(n, s.scale_warm + count, fa[n])
        await self.conn.execute("analyze")
        self.log(f"seeded {sum(len(v) for v in self.parents.values())} failed runs in {time.perf_counter() - t0:.1f}s")
        pg = await self.conn.fetchval("show server_version")
        la = os.getloadavg()
        self.results["machine"] = {"cores": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                                   "postgres": pg, "loadavg_at_start": [round(x, 2) for x in la]}
        self.results["git_rev"] = _git_rev()

    async def teardown(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs.clear()
        if getattr(self, "conn", None) is not None:
            await self.conn.close()
        if getattr(self, "db_name", None):
            await env.drop_database(self.admin, self.db_name)

    def _start_api(self) -> None:
        e = env.service_env(self.url, **self.extra_env)
        self.api, self.port = env.start_api(e, self.dir / "api.log")
        self.procs.append(self.api)

    def _stop(self, proc: env.Proc) -> int:
        """Stops the process; returns how many error lines it logged (crashed drivers, 500s, lost connections)."""
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)
        text = proc.log_path.read_text(errors="replace")
        errors = text.count('"level":"error"') + text.count('"level": "error"')
        if errors:
            first = next((ln for ln in text.splitlines() if '"error"' in ln), "")[:400]
            self.log(f"  ! {proc.args[0]} logged {errors} error(s), e.g. {first}")
        return errors

    async def _workers(self, n: int, *, notify: bool, extra_env: dict | None = None) -> list[env.Proc]:
        e = env.service_env(self.url, **{**self.extra_env, **(extra_env or {})})
        ws = [env.start_worker(e, self.dir / f"worker-{uuid.uuid4().hex[:6]}.log", f"bench{i}", notify=notify)
              for i in range(n)]
        self.procs += ws
        app_name = "meshhook-listener" if notify else "meshhook-worker"
        deadline = time.monotonic() + 60
        while True:
            for w in ws:
                if not w.alive():
                    raise RuntimeError(f"a worker exited:\n{w.tail()}")
            started = all("worker started" in w.tail(100_000) for w in ws)
            conns = await self.conn.fetchval(
                "select count(*) from pg_stat_activity where datname = $1 and application_name = $2",
                self.db_name, app_name)
            if started and conns >= n:
                return ws
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + "\n".join(w.tail() for w in ws))
            await asyncio.sleep(0.05)

    async def _cancel_queued(self) -> None:
        """Resumed children nobody ran: out of the way before a worker starts."""
        await self.conn.execute("update runs set status = 'cancelled', finished_at = clock_timestamp()"
                                " where status in ('queued', 'running')")

    # ---- resume over HTTP ------------------------------------------------------------
    async def _http_resumes(self, parents: list[uuid.UUID], concurrency: int, from_step: str) -> tuple[list[float], int, str]:
        body = json.dumps({"from_step": from_step}).encode()
        it = iter(parents)
        lat: list[float] = []
        errors = [0, ""]

        async def client(i: int) -> None:
            c = Connection("127.0.0.1", self.port)
            headers = {"Authorization": f"Bearer {self.tokens[i % len(self.tokens)]}",
                       "Content-Type": "application/json", "User-Agent": "meshhook-bench"}
            try:
                for pid in it:
                    raw = c.build("POST", f"/runs/{pid}/resume", headers, body)
                    t = time.perf_counter()
                    status, _h, resp = await c.send(raw)
                    lat.append(time.perf_counter() - t)
                    if status != 202:
                        errors[0] += 1
                        errors[1] = errors[1] or f"{status} {resp[:300]!r}"
            finally:
                await c.close()

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        return lat, errors[0], errors[1]

    async def resume_phase(self, name: str, parents: list[uuid.UUID], warm: int, concurrency: int,
                           from_step: str) -> dict:
        if warm:
            _, errs, sample = await self._http_resumes(parents[:warm], concurrency, from_step)
            if errs:
                raise RuntimeError(f"{name}: warm-up resumes failed ({errs}): {sample}")
        async with Meter(self.conn, self.db_name, "meshhook-api", self.api.pid) as m:
            lat, errs, sample = await self._http_resumes(parents[warm:], concurrency, from_step)
        if errs:
            raise RuntimeError(f"{name}: {errs} resumes were not accepted: {sample}")
        out = {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "per_s": len(lat) / m.wall,
               "n": len(lat), "client_cpu": m.client_cpu, "api_cpu": m.api_cpu, "machine_busy": m.machine_busy,
               **m.per_op_ms(len(lat))}
        self.log(f"  {name}: n={len(lat)} p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms "
                 f"{out['per_s']:.0f}/s; CPU per resume: API {out['api_cpu_ms']:.2f}ms, PostgreSQL "
                 f"{out['pg_cpu_ms']:.2f}ms ({m.pg_backends} backends), client {out['client_cpu_ms']:.2f}ms; "
                 f"machine busy {m.machine_busy:.0%}")
        return out

    async def pooler_phase(self, parents: list[uuid.UUID], warm: int, from_step: str) -> dict:
        """One client, alternating between the direct API and a second API process whose pool goes
        through a real PgBouncer in transaction mode (MESHHOOK_DB_POOLER=transaction: no prepared
        statement outlives its transaction), so both see the same machine at the same moments."""
        from tests.pgbouncer import PgBouncer

        bouncer = await asyncio.to_thread(PgBouncer(self.admin, pool_size=20).start)
        direct_port = self.port
        pooled_api = None
        try:
            e = env.service_env(bouncer.url(self.url), **{**self.extra_env, "MESHHOOK_DB_POOLER": "transaction",
                                                          "MESHHOOK_LISTEN_URL": self.url})
            pooled_api, pooled_port = await asyncio.to_thread(env.start_api, e, self.dir / "api-pooler.log")
            self.procs.append(pooled_api)
            lat: dict[int, list[float]] = {direct_port: [], pooled_port: []}
            for i in range(0, len(parents) - 1, 2):
                for port, pid in ((direct_port, parents[i]), (pooled_port, parents[i + 1])):
                    self.port = port
                    got, errs, sample = await self._http_resumes([pid], 1, from_step)
                    if errs:
                        raise RuntimeError(f"pooler phase: a resume was not accepted: {sample}")
                    if i >= 2 * warm:
                        lat[port] += got
            out = {"p50_ms": pct(lat[pooled_port], 50) * 1e3, "p99_ms": pct(lat[pooled_port], 99) * 1e3,
                   "direct_p50_ms": pct(lat[direct_port], 50) * 1e3, "n": len(lat[pooled_port])}
            self.log(f"  HTTP through PgBouncer (transaction mode), 1 client, alternating with the direct API: "
                     f"n={out['n']} p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms "
                     f"(direct meanwhile: p50={out['direct_p50_ms']:.2f}ms)")
            out["errors"] = self._stop(pooled_api)
            return out
        finally:
            self.port = direct_port
            if pooled_api is not None and pooled_api in self.procs:
                self._stop(pooled_api)
            await asyncio.to_thread(bouncer.stop)

    # ---- the floor ---------------------------------------------------------------------
    async def record_floor(self) -> RecordedResume:
        warm, parent = self.parents["floor_record"]
        rec = await RecordedResume.record(self.url, self.seed.editors[0], self.claims[0], warm, parent,
                                          f"s{self.s.fail_at[10]}")
        self.log(f"floor: {rec.round_trips} round trips per resume, recorded from app.resume.service.resume:")
        for line in rec.describe():
            self.log(f"    {line}")
        return rec

    async def floor_phase(self, name: str, rec: RecordedResume | RawResume, parents: list[uuid.UUID], warm: int,
                          concurrency: int) -> dict:
        from app.db.engine import init_connection

        app_name = "meshhook-bench-floor-raw" if isinstance(rec, RawResume) else "meshhook-bench-floor"
        pool = await asyncpg.create_pool(self.url, min_size=concurrency, max_size=concurrency, init=init_connection,
                                         server_settings={"application_name": app_name})
        try:
            async def run(batch: list[uuid.UUID]) -> list[float]:
                it = iter(batch)
                lat: list[float] = []

                async def client() -> None:
                    async with pool.acquire() as conn:
                        for pid in it:
                            t = time.perf_counter()
                            await rec.replay(conn, pid)
                            lat.append(time.perf_counter() - t)

                await asyncio.gather(*(client() for _ in range(concurrency)))
                return lat

            await run(parents[:warm])
            async with Meter(self.conn, self.db_name, app_name) as m:
                lat = await run(parents[warm:])
        finally:
            await pool.close()
        made = await self.conn.fetchval(
            "select count(*) from runs where parent_run_id = any($1::uuid[]) and trigger = 'resume'", parents)
        if made != len(parents):
            raise RuntimeError(f"floor {name}: {made} resumed runs written for {len(parents)} parents")
        out = {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "per_s": len(lat) / m.wall,
               "n": len(lat), "client_cpu": m.client_cpu, "machine_busy": m.machine_busy, **m.per_op_ms(len(lat))}
        self.log(f"  {name}: n={len(lat)} p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms "
                 f"{out['per_s']:.0f}/s; CPU per resume: PostgreSQL {out['pg_cpu_ms']:.2f}ms "
                 f"({m.pg_backends} backends), asyncpg client {out['client_cpu_ms']:.2f}ms; "
                 f"machine busy {m.machine_busy:.0%}")
        return out

    # ---- pickup ------------------------------------------------------------------------
    async def pickup_phase(self, name: str, parents: list[uuid.UUID], *, timeout_s: float) -> dict:
        """Resume one run at a time while a worker idles; for each child, the time from the
        resume transaction's last write (its audit row) and from the HTTP response to the
        worker's claim (the run_started event). Every timestamp is the database's clock_timestamp()
        or, for the response, this host's wall clock (the same clock)."""
        body = json.dumps({"from_step": f"s{self.s.fail_at[10]}"}).encode()
        c = Connection("127.0.0.1", self.port)
        headers = {"Authorization": f"Bearer {self.tokens[0]}", "Content-Type": "application/json",
                   "User-Agent": "meshhook-bench"}
        from_tx, from_created, from_resp = [], [], []
        try:
            for i, pid in enumerate(parents):
                status, _h, resp = await c.request("POST", f"/runs/{pid}/resume", headers, body)
                t_resp = time.time()
                if status != 202:
                    raise RuntimeError(f"{name}: resume answered {status}: {resp[:300]!r}")
                child = uuid.UUID(json.loads(resp)["id"])
                deadline = time.monotonic() + timeout_s
                while True:
                    st = await self.conn.fetchval("select status from runs where id = $1", child)
                    if st in FINAL:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: run {child} not finished within {timeout_s}s (status {st})")
                    await asyncio.sleep(0.01)
                row = await self.conn.fetchrow(
                    "select extract(epoch from r.created_at)::float8 as created,"
                    " extract(epoch from (select a.at from audit_log a where a.new_run_id = r.id limit 1))::float8 as tx_end,"
                    " extract(epoch from (select e.at from run_events e where e.run_id = r.id and e.type = 'run_started'"
                    "   order by e.id limit 1))::float8 as claimed"
                    " from runs r where r.id = $1", child)
                if i == 0:
                    continue  # the worker's first claim warms its caches
                from_tx.append(row["claimed"] - row["tx_end"])
                from_created.append(row["claimed"] - row["created"])
                from_resp.append(row["claimed"] - t_resp)
        finally:
            await c.close()
        out = {"p50_ms": pct(from_tx, 50) * 1e3, "p99_ms": pct(from_tx, 99) * 1e3,
               "created_p99_ms": pct(from_created, 99) * 1e3,
               "resp_p50_ms": pct(from_resp, 50) * 1e3, "resp_p99_ms": pct(from_resp, 99) * 1e3, "n": len(from_tx)}
        self.log(f"  {name}: n={len(from_tx)} p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms "
                 f"(from the response: p50={out['resp_p50_ms']:.2f}ms p99={out['resp_p99_ms']:.2f}ms)")
        return out

    # ---- bulk resume ---------------------------------------------------------------------
    async def bulk_phase(self, parents: list[uuid.UUID]) -> dict:
        """One `POST /projects/{id}/bulk-resumes` over `parents` at max_per_second 1000, driven by one
        worker process with nothing else to do but run the resumed runs it creates. Rate = runs ÷
        (the job's finished_at − its created_at), both the database's clock."""
        ws = await self._workers(1, notify=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not await self.conn.fetchval(
                "select count(*) from pg_stat_activity where datname = $1 and application_name = $2",
                self.db_name, "meshhook-bulk-listener"):
            await asyncio.sleep(0.02)  # the job driver's LISTEN is up: the NOTIFY of the new job reaches it
        body = json.dumps({"filter": {"workflow_id": str(self.seed.workflows[10]), "run_ids": [str(p) for p in parents]},
                           "reason": "bench", "max_per_second": 1000}).encode()
        headers = {"Authorization": f"Bearer {self.tokens[0]}", "Content-Type": "application/json",
                   "User-Agent": "meshhook-bench"}
        c = Connection("127.0.0.1", self.port)
        watch = await asyncpg.connect(self.url)  # the meter samples on self.conn meanwhile
        try:
            async with Meter(self.conn, self.db_name, "meshhook-bulk", ws[0].pid) as m:
                status, _h, resp = await c.request("POST", f"/projects/{self.seed.project}/bulk-resumes", headers, body)
                if status != 202:
                    raise RuntimeError(f"bulk resume answered {status}: {resp[:300]!r}")
                bulk_id = uuid.UUID(json.loads(resp)["id"])
                deadline = time.monotonic() + max(60.0, len(parents) * 0.1)
                while not await watch.fetchval("select finished_at is not null from bulk_resumes where id = $1", bulk_id):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the bulk resume did not finish")
                    await asyncio.sleep(0.02)
        finally:
            await c.close()
            await watch.close()
        row = await self.conn.fetchrow(
            "select b.status, b.accepted, b.matched, extract(epoch from b.finished_at - b.created_at)::float8 as secs,"
            " (select extract(epoch from max(r.created_at) - min(r.created_at))::float8 from runs r"
            "   where r.parent_run_id = any($2::uuid[])) as span"
            " from bulk_resumes b where b.id = $1", bulk_id, parents)
        errors = self._stop(ws[0])
        if row["status"] != "succeeded" or row["accepted"] != len(parents):
            raise RuntimeError(f"bulk resume: {row['status']}, {row['accepted']} of {len(parents)} accepted")
        out = {"per_s": row["accepted"] / row["secs"], "span_per_s": (row["accepted"] - 1) / row["span"],
               "secs": row["secs"], "n": row["accepted"], "worker_cpu": m.api_cpu, "pg_cpu_ms": m.pg_cpu_s / row["accepted"] * 1e3,
               "worker_cpu_ms": m.api_cpu_s / row["accepted"] * 1e3, "machine_busy": m.machine_busy, "errors": errors}
        self.log(f"  bulk resume of {out['n']} runs at max_per_second 1000: {out['secs']:.2f}s = {out['per_s']:.0f}/s "
                 f"(first to last resume: {out['span_per_s']:.0f}/s); worker process {out['worker_cpu']:.0%} of a core "
                 f"({out['worker_cpu_ms']:.2f} ms per resume, with running the resumed runs), PostgreSQL "
                 f"{out['pg_cpu_ms']:.2f} ms per resume (bulk pool); machine busy {m.machine_busy:.0%}")
        return out

    # ---- worker throughput ---------------------------------------------------------------
    async def drain(self, count: int) -> tuple[float, int, float]:
        ids, t0 = await self.seed.queued_runs(10, count)
        deadline = time.monotonic() + max(60.0, count * 0.5)
        while True:
            left = await self.conn.fetchval(
                "select count(*) from runs where id = any($1::uuid[]) and status not in ('succeeded', 'failed', 'cancelled')",
                ids)
            if left == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} of {count} runs not finished")
            await asyncio.sleep(0.02)
        row = await self.conn.fetchrow(
            "select extract(epoch from max(finished_at))::float8 as t1,"
            " count(*) filter (where status <> 'succeeded') as bad from runs where id = any($1::uuid[])", ids)
        if row["bad"]:
            raise RuntimeError(f"{row['bad']} of {count} drained runs did not succeed")
        steps = await self.conn.fetchval(
            "select count(*) from step_runs where run_id = any($1::uuid[]) and status = 'succeeded'", ids)
        secs = row["t1"] - t0
        return steps / secs, steps, secs

    async def throughput_phase(self, n_workers: int) -> dict:
        ws = await self._workers(n_workers, notify=True)
        spy = self._spy(ws[0].pid, f"worker-x{n_workers}") if self.py_spy else None
        try:
            await self.drain(self.s.drain_warm * n_workers)
            busy0 = _machine_busy()
            rate, steps, secs = await self.drain(self.s.drain)
            busy1 = _machine_busy()
        finally:
            if spy:
                self._unspy(spy)
            errors = sum(self._stop(w) for w in ws)
        tot = busy1[1] - busy0[1]
        busy = (busy1[0] - busy0[0]) / tot if tot else float("nan")
        self.log(f"  {n_workers} worker(s): {steps} steps in {secs:.2f}s = {rate:.0f} steps/s (machine busy {busy:.0%})")
        return {"steps_per_s": rate, "steps": steps, "secs": secs, "errors": errors}

    # ---- fair share ------------------------------------------------------------------------
    async def fair_phase(self) -> dict:
        """Tenant B queues `fair_slow` runs whose http_call trickles for a minute; once B holds its
        share, tenant A starts one-step runs one at a time. For each, the wait from its creation to
        the worker's claim (run_started), both on the database clock. One worker, default settings
        (MESHHOOK_PROJECT_MAX_RUNNING 16, 32 slots)."""
        from tests.upstream import SlowUpstream

        up = SlowUpstream()
        tenant_b = Seeder(self.conn)
        await tenant_b.project_with_editors(0)
        slow = {"nodes": [{"id": "start", "data": {"type": "webhook", "config": {}}},
                          {"id": "call", "data": {"type": "http_call", "config": {
                              "url": f"{up.url}/trickle/bench?bytes=60&every=1", "timeout_s": 90,
                              "retry": {"max_attempts": 1}}}}],
                 "edges": [{"source": "start", "target": "call"}]}
        wf_b = await tenant_b.custom_workflow("trickle", slow)
        await self.seed.workflow(2)
        ws = await self._workers(1, notify=True, extra_env={"MESHHOOK_EGRESS_ALLOW": "127.0.0.1"})
        waits: list[float] = []
        try:
            b_ids = await tenant_b.queued_runs_of(wf_b, [("start", "webhook"), ("call", "http_call")], self.s.fair_slow)
            deadline = time.monotonic() + 60
            while await self.conn.fetchval(
                    "select count(*) from step_runs where run_id = any($1::uuid[]) and step_key = 'call'"
                    " and status = 'running'", b_ids) < min(16, self.s.fair_slow):
                if time.monotonic() > deadline:
                    raise RuntimeError("tenant B's slow runs did not start")
                await asyncio.sleep(0.05)
            for _ in range(self.s.fair_probes + 1):
                [rid], _t0 = await self.seed.queued_runs(2, 1)
                deadline = time.monotonic() + 30
                while True:
                    row = await self.conn.fetchrow(
                        "select r.status, extract(epoch from (select e.at from run_events e where e.run_id = r.id"
                        " and e.type = 'run_started' order by e.id limit 1) - r.created_at)::float8 as wait"
                        " from runs r where r.id = $1", rid)
                    if row["status"] in FINAL:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"tenant A's run {rid} not finished within 30 s ({row['status']})")
                    await asyncio.sleep(0.005)
                if row["status"] != "succeeded":
                    raise RuntimeError(f"tenant A's run {rid} ended {row['status']}")
                waits.append(row["wait"])
            in_flight = await self.conn.fetchval(
                "select count(*) from step_runs where run_id = any($1::uuid[]) and step_key = 'call'"
                " and status = 'running'", b_ids)
        finally:
            errors = self._stop(ws[0])
            up.close()
            await self._cancel_queued()
        waits = waits[1:]  # the first claim of a new workflow warms the worker's caches
        out = {"p50_ms": pct(waits, 50) * 1e3, "p99_ms": pct(waits, 99) * 1e3, "n": len(waits),
               "b_in_flight": in_flight, "errors": errors}
        self.log(f"  tenant A while B has {self.s.fair_slow} slow runs ({in_flight} in flight): n={len(waits)} "
                 f"p50={out['p50_ms']:.1f}ms p99={out['p99_ms']:.1f}ms")
        return out

    # ---- profiling --------------------------------------------------------------------------
    def _spy(self, pid: int, label: str) -> subprocess.Popen | None:
        exe = Path(os.environ.get("PY_SPY", Path(os.sys.executable).parent / "py-spy"))
        self.py_spy.mkdir(parents=True, exist_ok=True)
        try:
            p = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                                  "--nonblocking", "-o", str(self.py_spy / f"{label}.txt")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            self.log(f"  (py-spy unavailable: {exc})")
            return None
        time.sleep(0.5)
        return p

    def _unspy(self, p: subprocess.Popen) -> None:
        import signal

        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()

    async def _settle(self) -> None:
        """After a bulk load: fresh statistics and visibility map, and a checkpoint, so the next
        phase measures a database that grew, not the write-back of the load's dirty buffers
        (without it, resumes right after the load waited on evicting them)."""
        await self.conn.execute("vacuum analyze")
        await self.conn.execute("checkpoint")

    # ---- listing runs ----------------------------------------------------------------------
    async def list_phase(self, name: str, n: int) -> dict:
        """GET /runs?project_id=&limit=50 of the bench project, one connection, `n` times."""
        c = Connection("127.0.0.1", self.port)
        headers = {"Authorization": f"Bearer {self.tokens[0]}", "User-Agent": "meshhook-bench"}
        raw = c.build("GET", f"/runs?project_id={self.seed.project}&limit=50", headers)
        lat: list[float] = []
        try:
            for i in range(n + 5):
                t0 = time.perf_counter()
                status, _h, resp = await c.send(raw)
                if status != 200:
                    raise RuntimeError(f"{name}: GET /runs answered {status}: {resp[:300]!r}")
                if i >= 5:
                    lat.append(time.perf_counter() - t0)
        finally:
            await c.close()
        out = {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "n": len(lat)}
        self.log(f"  {name}: n={len(lat)} p50={out['p50_ms']:.2f}ms p99={out['p99_ms']:.2f}ms")
        return out

    # ---- all of it ----------------------------------------------------------------------------
    async def run(self) -> dict:
        s, P, res = self.s, self.parents, self.results
        fs = lambda n: f"s{s.fail_at[n]}"  # noqa: E731
        rec = await self.record_floor()
        raw = RawResume(self.seed.editors[0], 10, s.fail_at[10])
        self._start_api()
        # Each HTTP phase is followed at once by its floors, so that all see the same machine
        # (the load of a shared box drifts within minutes) and tables of the same size.
        self.log("resume over HTTP (API process without a worker) | floor (the recorded SQL through asyncpg) | "
                 "raw floor (a hand-written superuser transaction of the same writes):")
        c1 = await self.resume_phase("HTTP, 1 client", P["c1"], s.c1_warm, 1, fs(10))
        f1 = await self.floor_phase("floor, 1 client", rec, P["floor_c1"], s.c1_warm, 1)
        r1 = await self.floor_phase("raw floor, 1 client", raw, P["raw_c1"], s.c1_warm, 1)
        spy = self._spy(self.api.pid, "api-c32") if self.py_spy else None
        try:
            c32 = await self.resume_phase(f"HTTP, {s.concurrency} clients", P["c32"], s.c32_warm, s.concurrency, fs(10))
        finally:
            if spy:
                self._unspy(spy)
        f32 = await self.floor_phase(f"floor, {s.concurrency} clients", rec, P["floor_c32"], s.c32_warm, s.concurrency)
        r32 = await self.floor_phase(f"raw floor, {s.concurrency} clients", raw, P["raw_c32"], s.c32_warm,
                                     s.concurrency)
        scale = {}
        for n in s.scale:
            scale[n] = await self.resume_phase(f"HTTP, {n} steps, 1 client", P[f"scale{n}"], s.scale_warm, 1, fs(n))
        lists = await self.list_phase("GET /runs?project_id=&limit=50", s.lists)

        # As in production: a worker runs the resumed children while resumes keep coming.
        await self._cancel_queued()
        self.log("resume over HTTP while a worker drains the resumed runs:")
        ws = await self._workers(1, notify=True)
        wc1 = await self.resume_phase("HTTP, 1 client, worker draining", P["worker_c1"], s.c1_warm, 1, fs(10))
        wc32 = await self.resume_phase(f"HTTP, {s.concurrency} clients, worker draining", P["worker_c32"],
                                       s.c32_warm, s.concurrency, fs(10))
        errors = self._stop(ws[0])

        pooled = await self.pooler_phase(P["pooler"], s.c1_warm, fs(10))

        await self._cancel_queued()
        self.log("pickup (resume → worker claim):")
        ws = await self._workers(1, notify=True)
        pick = await self.pickup_phase("LISTEN/NOTIFY", P["pickup"], timeout_s=15)
        errors += self._stop(ws[0])
        ws = await self._workers(1, notify=False, extra_env={"MESHHOOK_POLL_INTERVAL_S": str(s.poll_interval_s)})
        poll = await self.pickup_phase(f"polling only, every {s.poll_interval_s}s", P["poll"],
                                       timeout_s=15 + s.poll_interval_s * 4)
        errors += self._stop(ws[0])
        await self._cancel_queued()
        self.log("bulk resume (one job, one worker):")
        bulk = await self.bulk_phase(P["bulk"])

        await self._cancel_queued()
        self.log("worker throughput (10-step transform-only runs):")
        t1 = await self.throughput_phase(1)
        t2 = await self.throughput_phase(2)
        self.log("fair share (tenant A's pickup while tenant B's slow runs fill the engine):")
        fair = await self.fair_phase()

        # Growth, in the same run (no worker from here on: the other tenants' queue stays deep).
        await self._cancel_queued()
        t0 = time.perf_counter()
        others = await grow_queue(self.conn, self.seed.owner, projects=s.other_projects, queued=s.other_queued)
        await self._settle()
        self.log(f"deep queue: {s.other_queued} queued runs of {s.other_projects} other projects "
                 f"({time.perf_counter() - t0:.1f}s to seed):")
        P["deep_c1"] = await self.seed.failed_parents(10, s.c1_warm + s.c1, s.fail_at[10])
        deep = await self.resume_phase("HTTP, 1 client, deep queue", P["deep_c1"], s.c1_warm, 1, fs(10))
        t0 = time.perf_counter()
        await grow_history(self.conn, self.seed.owner, others, finished=s.other_finished,
                           member=self.seed.editors[0], member_of=s.member_of)
        await self._settle()
        self.log(f"grown database: + {s.other_finished} finished runs, the resuming user a member of "
                 f"{s.member_of + 1} projects ({time.perf_counter() - t0:.1f}s to seed and VACUUM ANALYZE):")
        P["grown_c1"] = await self.seed.failed_parents(10, s.c1_warm + s.c1, s.fail_at[10])
        # The small-database figure again, next to the grown one, by the same (first) editor.
        grown = await self.resume_phase("HTTP, 1 client, grown database", P["grown_c1"], s.c1_warm, 1, fs(10))
        lists_grown = await self.list_phase("GET /runs?project_id=&limit=50, grown database", s.lists)
        api_errors = self._stop(self.api)

        res.update({
            "resume_p50_ms": r(c32["p50_ms"]), "resume_p99_ms": r(c32["p99_ms"]), "resumes_per_s": r(c32["per_s"], 1),
            "resume_c1_p50_ms": r(c1["p50_ms"]), "resume_c1_p99_ms": r(c1["p99_ms"]),
            "resume_c1_per_s": r(c1["per_s"], 1),
            "resume_1000_steps_p99_ms": r(scale[1000]["p99_ms"]),
            "resume_1000_steps_p50_ms": r(scale[1000]["p50_ms"]),
            "resume_100_steps_p99_ms": r(scale[100]["p99_ms"]), "resume_100_steps_p50_ms": r(scale[100]["p50_ms"]),
            "resume_10_steps_p99_ms": r(scale[10]["p99_ms"]), "resume_10_steps_p50_ms": r(scale[10]["p50_ms"]),
            "resume_pooler_p50_ms": r(pooled["p50_ms"]), "resume_pooler_p99_ms": r(pooled["p99_ms"]),
            "resume_pooler_direct_p50_ms": r(pooled["direct_p50_ms"]),
            "ratio_resume_pooler_to_direct_p50": r(pooled["p50_ms"] / pooled["direct_p50_ms"]),
            "resume_worker_c1_p50_ms": r(wc1["p50_ms"]), "resume_worker_c1_p99_ms": r(wc1["p99_ms"]),
            "resume_worker_p50_ms": r(wc32["p50_ms"]), "resume_worker_p99_ms": r(wc32["p99_ms"]),
            "resume_worker_per_s": r(wc32["per_s"], 1),
            "resume_deep_queue_c1_p50_ms": r(deep["p50_ms"]), "resume_deep_queue_c1_p99_ms": r(deep["p99_ms"]),
            "resume_grown_p50_ms": r(grown["p50_ms"]), "resume_grown_p99_ms": r(grown["p99_ms"]),
            "ratio_resume_grown_p50": r(grown["p50_ms"] / c1["p50_ms"]),
            "ratio_resume_grown_p99": r(grown["p99_ms"] / c1["p99_ms"]),
            "resume_grown_pg_cpu_ms_per_resume": r(grown["pg_cpu_ms"], 3),
            "resume_deep_queue_pg_cpu_ms_per_resume": r(deep["pg_cpu_ms"], 3),
            "ratio_resume_grown_pg_cpu": r(grown["pg_cpu_ms"] / c1["pg_cpu_ms"]),
            "ratio_resume_grown_api_cpu": r(grown["api_cpu_ms"] / c1["api_cpu_ms"]),
            "resume_c1_pg_cpu_ms_per_resume": r(c1["pg_cpu_ms"], 3),
            "runs_list_p50_ms": r(lists["p50_ms"]), "runs_list_p99_ms": r(lists["p99_ms"]),
            "runs_list_grown_p50_ms": r(lists_grown["p50_ms"]), "runs_list_grown_p99_ms": r(lists_grown["p99_ms"]),
            "grown": {"other_projects": s.other_projects, "other_queued_runs": s.other_queued,
                      "other_finished_runs": s.other_finished, "memberships_of_resuming_user": s.member_of + 1},
            "pickup_p50_ms": r(pick["p50_ms"]), "pickup_p99_ms": r(pick["p99_ms"]),
            "pickup_from_created_p99_ms": r(pick["created_p99_ms"]),
            "pickup_from_response_p50_ms": r(pick["resp_p50_ms"]), "pickup_from_response_p99_ms": r(pick["resp_p99_ms"]),
            "pickup_poll_only_p50_ms": r(poll["p50_ms"]), "pickup_poll_only_p99_ms": r(poll["p99_ms"]),
            "pickup_poll_interval_s": s.poll_interval_s,
            "worker_steps_per_s_1": r(t1["steps_per_s"], 1), "worker_steps_per_s_2": r(t2["steps_per_s"], 1),
            "bulk_resumes_per_s": r(bulk["per_s"], 1), "bulk_resume_first_to_last_per_s": r(bulk["span_per_s"], 1),
            "bulk_resume_runs": bulk["n"], "bulk_worker_cpu_share": r(bulk["worker_cpu"]),
            "bulk_worker_cpu_ms_per_resume": r(bulk["worker_cpu_ms"], 3),
            "bulk_pg_cpu_ms_per_resume": r(bulk["pg_cpu_ms"], 3), "bulk_machine_busy_share": r(bulk["machine_busy"]),
            "fair_pickup_p50_ms": r(fair["p50_ms"]), "fair_pickup_p99_ms": r(fair["p99_ms"]),
            "fair_slow_runs": s.fair_slow, "fair_slow_in_flight": fair["b_in_flight"],
            "floor_resume_p50_ms": r(f32["p50_ms"]), "floor_resume_p99_ms": r(f32["p99_ms"]),
            "floor_resumes_per_s": r(f32["per_s"], 1),
            "floor_resume_c1_p50_ms": r(f1["p50_ms"]), "floor_resume_c1_p99_ms": r(f1["p99_ms"]),
            "floor_round_trips": rec.round_trips,
            "floor_raw_c1_p50_ms": r(r1["p50_ms"]), "floor_raw_c1_p99_ms": r(r1["p99_ms"]),
            "floor_raw_p50_ms": r(r32["p50_ms"]), "floor_raw_p99_ms": r(r32["p99_ms"]),
            "floor_raw_per_s": r(r32["per_s"], 1), "floor_raw_round_trips": raw.round_trips,
            "floor_raw_pg_cpu_ms_per_resume": r(r32["pg_cpu_ms"], 3),
            "floor_raw_c1_pg_cpu_ms_per_resume": r(r1["pg_cpu_ms"], 3),
            "floor_c1_pg_cpu_ms_per_resume": r(f1["pg_cpu_ms"], 3),
            "ratio_resume_p99_to_floor": r(c32["p99_ms"] / f32["p99_ms"]),
            "ratio_resume_c1_p50_to_floor": r(c1["p50_ms"] / f1["p50_ms"]),
            "ratio_floor_to_resume_throughput": r(f32["per_s"] / c32["per_s"]),
            "ratio_resume_c1_p99_to_floor_raw": r(c1["p99_ms"] / r1["p99_ms"]),
            "ratio_resume_c1_p50_to_floor_raw": r(c1["p50_ms"] / r1["p50_ms"]),
            "ratio_floor_c1_p99_to_floor_raw": r(f1["p99_ms"] / r1["p99_ms"]),
            "ratio_floor_raw_to_resume_throughput": r(r32["per_s"] / c32["per_s"]),
            "resume_client_cpu_share": r(c32["client_cpu"]), "resume_api_cpu_share": r(c32["api_cpu"]),
            "resume_machine_busy_share": r(c32["machine_busy"]),
            "resume_api_cpu_ms_per_resume": r(c32["api_cpu_ms"], 3),
            "resume_pg_cpu_ms_per_resume": r(c32["pg_cpu_ms"], 3),
            "resume_client_cpu_ms_per_resume": r(c32["client_cpu_ms"], 3),
            "floor_pg_cpu_ms_per_resume": r(f32["pg_cpu_ms"], 3),
            "floor_client_cpu_ms_per_resume": r(f32["client_cpu_ms"], 3),
            "resume_1000_steps_api_cpu_ms": r(scale[1000]["api_cpu_ms"], 3),
            "resume_1000_steps_pg_cpu_ms": r(scale[1000]["pg_cpu_ms"], 3),
            "samples": {"resume": c32["n"], "resume_c1": c1["n"], "steps_1000": scale[1000]["n"],
                        "pickup": pick["n"], "pickup_poll_only": poll["n"], "drain_steps": t1["steps"],
                        "floor": f32["n"], "floor_raw": r32["n"], "resume_worker": wc32["n"],
                        "resume_grown": grown["n"], "runs_list": lists["n"], "fair_pickup": fair["n"]},
            "concurrency": s.concurrency,
            "service_env": self.extra_env,
            "errors_logged": {"api": api_errors, "api_pooler": pooled["errors"], "pickup_workers": errors,
                              "bulk_worker": bulk["errors"], "workers_1": t1["errors"],
                              "workers_2": t2["errors"], "workers_fair": fair["errors"]},
        })
        res["targets"] = targets(res)
        return res


# DESIGN §8, as (key, comparison, bound); `met` is recorded for each in results.json.
TARGETS = [
    ("resume_c1_p50_ms", "<=", 3.0), ("resume_c1_p99_ms", "<=", 8.0), ("resumes_per_s", ">=", 500.0),
    ("resume_1000_steps_p99_ms", "<=", 100.0), ("pickup_p99_ms", "<=", 5.0),
    ("ratio_resume_grown_p50", "<=", 1.25), ("ratio_resume_grown_p99", "<=", 1.5),
    ("ratio_resume_c1_p99_to_floor_raw", "<=", 1.5), ("worker_steps_per_s_1", ">=", 1000.0),
]


def targets(res: dict) -> dict:
    out = {}
    for key, op, bound in TARGETS:
        v = res.get(key)
        ok = isinstance(v, (int, float)) and (v <= bound if op == "<=" else v >= bound)
        out[key] = {"value": v, "target": f"{op} {bound:g}", "met": bool(ok)}
    return out


async def run_bench(sizes: Sizes, log=print, py_spy: Path | None = None,
                    extra_env: dict[str, str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="meshhook-bench-") as d:
        b = Bench(sizes, Path(d), log, py_spy, extra_env)
        try:
            await b.setup()
            return await b.run()
        except BaseException:
            for p in b.procs:
                log(f"--- {p.args[0]} log tail ({p.log_path.name}):\n{p.tail(2000)}")
            raise
        finally:
            await b.teardown()
