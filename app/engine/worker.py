"""The engine worker: LISTEN + polling fallback → claim with FOR UPDATE SKIP LOCKED and a
lease (fair share: a per-project cap across workers and a per-project share of this worker's
slots, both in the claim query) → drive runs concurrently → heartbeat leases → on SIGTERM stop
claiming, let in-flight work finish within a grace period and release the rest.

A notification naming a run this worker drives makes its driver read the run's control (an
operator's cancel or pause) at once; the poll loop reads it for every driven run as the fallback.

The listener has its own connection outside the pool and reconnects with backoff; every
(re)connect wakes the claimer, which reconciles from the table (the table is the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx

from app.bulk.runner import BulkRunner
from app.db.engine import Database, is_db_unavailable
from app.egress.transport import egress_client
from app.db.listener import Listener, listen_dsn
from app.engine.driver import RunDriver
from app.engine.repository import EngineRepository
from app.errors import DatabaseUnavailable
from app.observability.metrics import RUNS_CLAIMED
from app.retention.service import Pruner
from app.secrets.crypto import Cipher
from app.secrets.redaction import Redactor
from app.settings import Settings
from app.workflows.service import DagCache

log = logging.getLogger("meshhook.worker")
CHANNEL = "meshhook_runs"
MAX_DRIVER_CRASHES = 3


class Worker:
    def __init__(
        self, settings: Settings, database_url: str, cipher: Cipher, *, name: str = "worker", notify: bool | None = None
    ):
        self.settings = settings
        self.cipher = cipher
        self.id = f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:6]}"
        # Steps hold a connection only to write. Half the slots (at most 16, + as many overflow) are
        # kept open: a smaller kept pool churns (overflow connections closed and reopened, each
        # re-preparing its statements) when demand hovers around it, e.g. one project at its cap.
        self.db = Database(
            database_url,
            pool_size=max(2, min(settings.worker_concurrency // 2, 16)),
            application_name="meshhook-worker",
            connect_timeout_s=settings.db_connect_timeout_s,
            command_timeout_s=settings.db_command_timeout_s,
        )
        self.notify = settings.notify_enabled if notify is None else notify
        self.http = egress_client(
            settings.egress_policy, limits=httpx.Limits(max_connections=settings.worker_concurrency * 2)
        )
        self.step_slots = asyncio.Semaphore(settings.worker_concurrency)
        self._project_slots: dict[uuid.UUID, list] = {}  # project -> [semaphore, users]
        self.dags = DagCache()
        self.active: dict[uuid.UUID, asyncio.Task] = {}
        self.drivers: dict[uuid.UUID, RunDriver] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self.listening = asyncio.Event()
        self.listener_connects = 0

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._poll_loop(), name="poll"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        self._tasks.append(asyncio.create_task(Pruner(self.db, self.settings).run(), name="retention"))
        if self.notify:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="listen"))
        self._tasks.append(
            asyncio.create_task(BulkRunner(self.settings, self.db.url, self.id, notify=self.notify).run(), name="bulk")
        )
        self._wake.set()
        log.info(
            "worker started",
            extra={"worker": self.id, "notify": self.notify, "concurrency": self.settings.worker_concurrency},
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; give in-flight runs `grace_s` to finish; release the leases of the rest."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        self._wake.set()
        for t in self._tasks:
            if t.get_name() in ("claim", "poll", "listen"):
                t.cancel()
        if self.active:
            await asyncio.wait(list(self.active.values()), timeout=grace)
        leftover = list(self.active)
        for t in list(self.active.values()):
            t.cancel()
        for t in list(self.active.values()):
            with contextlib.suppress(BaseException):
                await t
        if leftover:
            with contextlib.suppress(Exception):
                async with self.db.service_scope() as tx:
                    await EngineRepository(tx).release(self.id, leftover, notify=True)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        await self.http.aclose()
        await self.db.dispose()
        log.info("worker stopped", extra={"worker": self.id, "released": len(leftover)})

    @property
    def stopping(self) -> bool:
        """Set by SIGTERM: drivers start no new step and hand their runs back."""
        return self._stopping

    def wake_later(self, delay_s: float) -> None:
        asyncio.get_running_loop().call_later(delay_s + 0.01, self._wake.set)

    @property
    def worker_project_max(self) -> int:
        """This worker's per-project share of its slots: one project never holds them all, so
        another project's queued run always finds a free slot (unless concurrency is 1)."""
        c = self.settings.worker_concurrency
        return max(1, min(self.settings.project_max_running, c - max(1, c // 4)))

    @contextlib.asynccontextmanager
    async def step_slot(self, project_id: uuid.UUID) -> AsyncIterator[None]:
        """A slot for one in-flight request. One project's requests hold at most its share of the
        worker's slots (parallel branches of its runs included), so they never hold them all."""
        entry = self._project_slots.get(project_id)
        if entry is None:
            entry = self._project_slots[project_id] = [asyncio.Semaphore(self.worker_project_max), 0]
        entry[1] += 1
        try:
            async with entry[0], self.step_slots:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._project_slots[project_id]

    def on_notification(self, payload: str | None = None) -> None:
        """A 'meshhook_runs' notification: look for work; if it names a run driven here (an
        operator's cancel or pause), its driver reads the run's control now."""
        self._wake.set()
        if not payload or not self.drivers:
            return
        try:
            run_id = uuid.UUID(payload)
        except ValueError:
            return
        driver = self.drivers.get(run_id)
        if driver is not None:
            driver.check_control()

    async def poll_controls(self) -> None:
        """The polling fallback of the notification: pending controls of the runs driven here."""
        if not self.drivers:
            return
        async with self.db.service_scope() as tx:
            rows = await EngineRepository(tx).controls(list(self.drivers))
        for r in rows:
            driver = self.drivers.get(r["id"])
            if driver is not None:
                driver.control(r["control"])

    # ---- loops -------------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        def connected() -> None:
            self.listener_connects += 1
            self.listening.set()
            self._wake.set()  # reconcile from the table after every (re)connect

        await Listener(
            listen_dsn(self.settings.listen_url, self.db.url),
            {CHANNEL: self.on_notification},
            application_name="meshhook-listener",
            on_connect=connected,
            on_disconnect=self.listening.clear,
            poll_s=self.settings.poll_interval_s,
            connect_timeout_s=self.settings.db_connect_timeout_s,
        ).run()

    async def _poll_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.poll_interval_s)
            self._wake.set()
            try:
                await self.poll_controls()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                log.warning("control poll failed", extra={"worker": self.id, "error": type(exc).__name__})

    async def _heartbeat_loop(self) -> None:
        every = max(self.settings.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(every)
            if not self.active:
                continue
            try:
                async with self.db.service_scope() as tx:
                    await EngineRepository(tx).heartbeat(self.id, list(self.active), self.settings.lease_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("heartbeat failed", extra={"worker": self.id, "error": type(exc).__name__})

    async def _claim_loop(self) -> None:
        backoff = 0.05
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            free = self.settings.worker_concurrency - len(self.active)
            if free <= 0:
                continue  # a finishing run sets the wake-up again
            try:
                async with self.db.service_scope() as tx:
                    rows = await EngineRepository(tx).claim(
                        self.id,
                        free,
                        self.settings.lease_s,
                        list(self.active),
                        project_max=self.settings.project_max_running,
                        worker_project_max=self.worker_project_max,
                    )
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a claim loop that died would leave a live but idle worker
                expected = isinstance(
                    exc, (DatabaseUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
                )
                log.warning(
                    "claim failed; retrying",
                    exc_info=not expected,
                    extra={"worker": self.id, "error": type(exc).__name__},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._wake.set()
                continue
            for row in rows:
                RUNS_CLAIMED.inc()
                self.active[row["id"]] = asyncio.create_task(self._drive(row))
            if len(rows) == free or (rows and rows[0]["capped"]):
                # There may be more waiting: every free slot was filled, or the fair-share caps held
                # some candidates back and other projects' runs may sit behind them.
                self._wake.set()

    async def _drive(self, run) -> None:
        run_id = run["id"]
        driver: RunDriver | None = None
        try:
            dag = self.dags.cached(run["workflow_id"], run["workflow_version"])
            if dag is None:  # versions are immutable: only the first run of one costs a read
                async with self.db.service_scope() as tx:
                    dag = await self.dags.get(tx, run["workflow_id"], run["workflow_version"])
            if dag is None:  # the version's row is gone or its definition no longer parses: a crash, counted below
                raise LookupError(f"workflow version {run['workflow_version']} of the run cannot be loaded")
            driver = RunDriver(self, run, dag)
            self.drivers[run_id] = driver
            try:
                await driver.drive()
            finally:
                if self.drivers.get(run_id) is driver:
                    del self.drivers[run_id]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the lease expires and another claim retries the run
            # An exception's text may quote a secret: log and store it through the run's redactor (§9.2).
            redactor = driver.redactor if driver is not None else Redactor(())
            log.error(
                "run driver crashed",
                extra={"run_id": str(run_id), "worker": self.id, "exc": redactor.redact_text(traceback.format_exc())},
            )
            await self._after_crash(run, exc, redactor)
            self.wake_later(1.0)
        finally:
            if self.active.get(run_id) is asyncio.current_task():
                del self.active[run_id]
            if not self._stopping:
                self._wake.set()

    async def _after_crash(self, run, exc: Exception, redactor: Redactor) -> None:
        """A lost database is not the run's fault: hand it back. Anything else is counted on the run's
        timeline, and a run that keeps crashing the driver fails instead of being retried forever."""
        run_id = run["id"]
        with contextlib.suppress(Exception):
            async with self.db.service_scope() as tx:
                repo = EngineRepository(tx)
                if not (isinstance(exc, DatabaseUnavailable) or is_db_unavailable(exc)):
                    message = redactor.truncate(f"{type(exc).__name__}: {exc}", 300)
                    crashes = await repo.record_crash(run_id, self.id, message, MAX_DRIVER_CRASHES)
                    if crashes is not None and crashes >= MAX_DRIVER_CRASHES:
                        error = {"type": "engine_error", "message": f"the engine failed {crashes} times: {message}"}
                        await repo.add_events(run_id, run["project_id"], [("run_failed", None, {"error": error})])
                        await repo.finish_run(run_id, "failed", error, True)
                        return
                await repo.release(self.id, [run_id])

    async def run_forever(self) -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down", extra={"worker": self.id, "in_flight": len(self.active)})
        await self.stop()


class WorkerThread:
    """The in-process worker of `meshhook serve`, on its own thread and event loop: the engine's
    work (pure steps, JSON, writes) never stalls the API's loop, and the API's requests never
    stall the engine."""

    def __init__(self, settings: Settings, database_url: str, cipher: Cipher, *, name: str = "api-inproc"):
        self._args = (settings, database_url, cipher)
        self._name = name
        self.worker: Worker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.worker = Worker(*self._args, name=self._name)
                loop.run_until_complete(self.worker.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starter
                caller.call_soon_threadsafe(started.set_exception, exc)
                loop.close()
                return
            caller.call_soon_threadsafe(started.set_result, None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="meshhook-worker", daemon=True)
        self._thread.start()
        await started

    async def stop(self, grace_s: float | None = None) -> None:
        loop, worker = self._loop, self.worker
        if loop is None or worker is None or self._thread is None:
            return
        done = asyncio.run_coroutine_threadsafe(worker.stop(grace_s), loop)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(done)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
