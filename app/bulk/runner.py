"""The bulk-resume driver, run inside every worker: claims jobs with FOR UPDATE SKIP LOCKED and a
lease, resumes their runs in order at the requested pace through app.resume.service.resume (as the
job's creator, so RLS, the role check, eligibility, the audit row and the one-active-child rule all
apply), and records each outcome.

No run is resumed twice, whatever dies when: every resume carries the key
`bulk:<bulk_id>:<run_id>`, so a resume that committed before its worker died is replayed (same new
run) by the worker that takes the job over, and items are only ever settled once (`outcome =
'pending'` guards every update). NOTIFY wakes the driver on a new job; it also polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from typing import Any

import orjson

from app.audit.service import RequestFacts
from app.auth.jwt import User
from app.bulk.repository import WAKE_CHANNEL, WAKE_PAYLOAD, BulkRepository
from app.bulk.service import NO_ELIGIBLE_WHY, idempotency_key_of, skip_reason
from app.db.engine import Database, is_db_unavailable
from app.errors import DatabaseUnavailable, DomainError
from app.projects.service import RANK
from app.resume.service import resume
from app.db.listener import listen_dsn
from app.runs.stream import EventHub
from app.settings import Settings

log = logging.getLogger("meshhook.bulk")

MAX_JOBS = 4  # jobs one worker drives at once; each has its own pace
MAX_IN_FLIGHT = 16  # resumes of one job in flight at once (a resume takes a few ms; 1,000/s needs ~10)
BATCH_S = 0.2  # items handed out per start_batch: this much time at the job's rate (bounds cancel latency)
FLUSH_S = 0.1  # outcomes are written (with a progress event) this often
MAX_CRASHES = 3


Outcome = tuple[int, str, uuid.UUID | None, str | None]  # position, outcome, new run, why


def _columns(rows: list[Outcome]) -> tuple[list, list, list, list]:
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]


class BulkRunner:
    def __init__(self, settings: Settings, database_url: str, owner: str, *, notify: bool = True):
        self.settings = settings
        self.owner = owner
        # Its own pool, so pacing stays even while the worker's run drivers are busy (and the other way
        # round), sized to hold every in-flight resume plus the recorder: a connection opened per overflow
        # costs more than the resume it serves (asyncpg's type introspection, the dialect's set-up).
        # Half of it is kept open between jobs (a worker that never drives a job opens none), the rest
        # is overflow, closed when a job's burst is over: idle workers do not hold a server's connections.
        self.db = Database(
            database_url,
            pool_size=(MAX_IN_FLIGHT + 2) // 2,
            max_overflow=(MAX_IN_FLIGHT + 2) // 2,
            application_name="meshhook-bulk",
            connect_timeout_s=settings.db_connect_timeout_s,
            command_timeout_s=settings.db_command_timeout_s,
        )
        self.hub = EventHub(
            listen_dsn(settings.listen_url, database_url),
            settings.poll_interval_s,
            channel=WAKE_CHANNEL,
            application_name="meshhook-bulk-listener",
        )
        self.jobs: dict[uuid.UUID, asyncio.Task] = {}
        self._wake = self.hub.subscribe(WAKE_PAYLOAD) if notify else asyncio.Event()

    async def run(self) -> None:
        try:
            while True:
                free = MAX_JOBS - len(self.jobs)
                if free > 0:
                    try:
                        async with self.db.service_scope() as tx:
                            rows = await BulkRepository(tx).claim(
                                self.owner, free, self.settings.lease_s, list(self.jobs)
                            )
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the next poll tries again
                        log.warning("bulk claim failed", extra={"worker": self.owner, "error": type(exc).__name__})
                        rows = []
                    for row in rows:
                        self.jobs[row["id"]] = asyncio.create_task(self._drive(row))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
                self._wake.clear()
        finally:
            tasks = list(self.jobs.values())
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            self.hub.unsubscribe(WAKE_PAYLOAD, self._wake)
            await self.hub.close()
            await self.db.dispose()

    async def _drive(self, job) -> None:
        bulk_id = job["id"]
        try:
            await JobDriver(self, job).drive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted on the job; the lease lets another worker retry
            if isinstance(exc, DatabaseUnavailable) or is_db_unavailable(exc):
                log.warning("bulk resume paused: the database is away", extra={"bulk_id": str(bulk_id)})
                return  # not the job's fault; its lease expires and it is taken up again
            log.exception("bulk resume driver crashed", extra={"bulk_id": str(bulk_id), "worker": self.owner})
            with contextlib.suppress(Exception):
                async with self.db.service_scope() as tx:
                    repo = BulkRepository(tx)
                    crashes = await repo.record_crash(bulk_id, self.owner)
                    if crashes is not None and crashes >= MAX_CRASHES:
                        await repo.fail(
                            bulk_id, f"the bulk resume failed {crashes} times: {type(exc).__name__}: {str(exc)[:300]}"
                        )
        finally:
            if self.jobs.get(bulk_id) is asyncio.current_task():
                del self.jobs[bulk_id]
            self._wake.set()  # a free slot: claim the next job now


class JobDriver:
    """One job, while this worker holds its lease."""

    def __init__(self, runner: BulkRunner, job):
        self.runner, self.db, self.owner = runner, runner.db, runner.owner
        self.lease_s = runner.settings.lease_s
        self.id: uuid.UUID = job["id"]
        self.project_id: uuid.UUID = job["project_id"]
        self.matched: int = job["matched"]
        self.pos: int = job["next_position"]
        self.rate: int = job["max_per_second"]
        self.interval = 1.0 / self.rate
        creator: uuid.UUID = job["created_by"]
        self.user = User(creator, {"sub": str(creator), "role": "authenticated", "aud": runner.settings.jwt_audience})
        self.facts = RequestFacts(job["request_id"], job["ip"], f"meshhook-bulk-resume/{self.id}")
        request = job["request"]
        self.body = {"workflow_version": request.get("workflow_version", "original"), "reason": request.get("reason")}
        self.slots = asyncio.Semaphore(min(MAX_IN_FLIGHT, max(2, math.ceil(self.rate / 50))))
        self.in_flight: set[asyncio.Task] = set()
        self.results: list[Outcome] = []
        self.next_at = time.monotonic()
        self.resume_s: list[float] = []  # wall time of each resume call, for the closing log line
        self.lost = False  # the lease went to another worker, or the database is away: stop, settle nothing more
        self.halt: str | None = None  # the job cannot go on (its creator lost the right to resume)

    async def drive(self) -> None:
        flusher = asyncio.create_task(self._flush_loop())
        try:
            # Items handed to a resume before but never settled (a worker died or lost the lease): their
            # resume is called again with the same key, so one that committed is answered again.
            async with self.db.service_scope() as tx:
                leftovers = await BulkRepository(tx).unsettled_started_items(self.id)
            await self._dispatch(leftovers)
            batch = max(1, math.ceil(self.rate * BATCH_S))
            while not self.lost and self.halt is None and self.pos < self.matched:
                end = min(self.pos + batch, self.matched)
                started, todo = await self._start_batch(end)
                if not started:
                    break  # cancelled, or the lease is no longer ours
                self.pos = end
                await self._dispatch(todo)
            await self._settle()
            if not self.lost:
                await self._finish()
        finally:
            await self._close(flusher)

    # ---- dispatch ---------------------------------------------------------------------------------
    async def _start_batch(self, end: int) -> tuple[bool, list]:
        """Hand items [pos, end) out, and settle at once, in the same transaction, those that need no
        resume: runs someone already takes care of (skipped) and runs with no eligible step. So an item
        left unsettled by a crash is always one whose resume was called, and calling it again is safe."""
        async with self.db.service_scope() as tx:
            repo = BulkRepository(tx)
            items = await repo.start_batch(self.id, self.owner, self.pos, end)
            if not items:
                return False, []
            desc = await repo.descendants([i["run_id"] for i in items])
            settled: list[Outcome] = []
            todo = []
            for item in items:
                why = skip_reason(desc.get(item["run_id"]))
                if why is not None:
                    settled.append((item["position"], "skipped", None, why))
                elif item["from_step"] is None:
                    settled.append((item["position"], "rejected", None, NO_ELIGIBLE_WHY))
                else:
                    todo.append(item)
            if settled:
                await repo.record(self.id, self.owner, self.lease_s, *_columns(settled))
        return True, todo

    async def _dispatch(self, items) -> None:
        for item in items:
            if self.lost:
                return  # left pending: whoever holds the lease next calls their resume again
            if self.halt is not None:
                self.results.append((item["position"], "rejected", None, self.halt))
                continue
            await self.slots.acquire()
            await self._pace()
            task = asyncio.create_task(self._resume_one(item))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _pace(self) -> None:
        """One resume every 1/rate s. A late start does not earn a burst: at most one catch-up."""
        delay = self.next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.next_at = max(self.next_at + self.interval, time.monotonic() - self.interval)

    async def _resume_one(self, item) -> None:
        run_id: uuid.UUID = item["run_id"]
        position: int = item["position"]
        try:
            raw = orjson.dumps({"from_step": item["from_step"], **self.body})
            started = time.perf_counter()
            try:
                _status, body = await resume(
                    self.db, self.user, run_id, raw, idempotency_key_of(run_id, self.id), self.facts
                )
                self.results.append((position, "accepted", uuid.UUID(str(body["id"])), None))
                self.resume_s.append(time.perf_counter() - started)
            except DatabaseUnavailable:
                raise
            except DomainError as exc:
                self.results.append((position, *await self._judge(exc)))
        except DatabaseUnavailable:
            self.lost = True  # the item stays pending; the job is taken up again once the database is back
        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the other 9,999
            log.exception("bulk resume of a run failed", extra={"bulk_id": str(self.id), "run_id": str(run_id)})
            self.results.append((position, "rejected", None, f"internal error ({type(exc).__name__})"))
        finally:
            self.slots.release()

    async def _judge(self, exc: DomainError) -> tuple[str, uuid.UUID | None, str | None]:
        """A refused resume: `skipped` when someone else already takes care of the run, else `rejected`."""
        extra: dict[str, Any] = exc.extra
        if exc.status == 409 and extra.get("active_run_id"):
            return "skipped", None, f"already being resumed: run {extra['active_run_id']} is queued or running"
        if exc.status == 409 and extra.get("resolved_by"):
            return "skipped", None, f"resolved: run {extra['resolved_by']} succeeded"
        if exc.status in (403, 404):
            async with self.db.service_scope() as tx:
                role = await BulkRepository(tx).creator_role(self.project_id, self.user.id)
            if role is None or RANK[role] < RANK["editor"]:
                self.halt = "the bulk resume's creator is no longer an editor or owner of the project"
                return "rejected", None, self.halt
        return "rejected", None, exc.detail

    # ---- recording --------------------------------------------------------------------------------
    async def _flush(self) -> None:
        batch, self.results = self.results, []
        try:
            async with self.db.service_scope() as tx:
                row = await BulkRepository(tx).record(self.id, self.owner, self.lease_s, *_columns(batch))
        except BaseException:
            self.results[:0] = batch  # written with the next flush
            raise
        if row is None or not row["still_mine"]:
            self.lost = True

    async def _flush_loop(self) -> None:
        beat = min(FLUSH_S * 10, self.lease_s / 3)
        last = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_S)
            if not self.results and time.monotonic() - last < beat:
                continue
            try:
                await self._flush()
                last = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - kept and written with the next flush
                log.warning(
                    "bulk progress not recorded; retrying", extra={"bulk_id": str(self.id), "error": type(exc).__name__}
                )

    async def _settle(self) -> None:
        if self.in_flight:
            await asyncio.wait(list(self.in_flight))
        if self.results:
            try:
                await self._flush()
            except Exception:  # noqa: BLE001 - unsettled items are replayed by whoever drives the job next
                self.lost = True

    async def _finish(self) -> None:
        async with self.db.service_scope() as tx:
            repo = BulkRepository(tx)
            if self.halt is not None:
                await repo.reject_rest(self.id, self.halt)
                status = await repo.finish(self.id, self.owner, "failed", self.halt)
            else:
                status = await repo.finish(self.id, self.owner, "succeeded")
        if status is not None:
            lat = sorted(self.resume_s) or [0.0]
            log.info(
                "bulk resume finished",
                extra={
                    "bulk_id": str(self.id),
                    "status": status,
                    "resumed_here": len(self.resume_s),
                    "resume_p50_ms": round(lat[len(lat) // 2] * 1000, 2),
                    "resume_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
                },
            )

    async def _close(self, flusher: asyncio.Task) -> None:
        """Whatever ended the drive (done, cancelled, lost, crashed): let in-flight resumes end,
        write what they returned, hand the lease back."""
        flusher.cancel()
        with contextlib.suppress(BaseException):
            await flusher
        if self.in_flight:
            _done, pending = await asyncio.wait(list(self.in_flight), timeout=5)
            for t in pending:
                t.cancel()
        with contextlib.suppress(Exception):
            if self.results:
                await asyncio.wait_for(self._flush(), 5)
        with contextlib.suppress(Exception):
            async with self.db.service_scope() as tx:
                await asyncio.wait_for(BulkRepository(tx).release(self.id, self.owner), 2)
