"""Drives one claimed run: decides which steps are ready, executes them, persists every
transition with its event in one transaction, and settles the run's status.

Pure steps (webhook, transform, branch, pause, terminate) run inline and are written in
batches; http_call runs one attempt per task (parallel branches overlap) and is marked
`running` with its attempt number before each request goes out; the wait before a retry and a
delay put the step (and, when nothing else is in flight, the run) to sleep in the database.

Accounting: every row and event passes through `stage()` (the one choke point) into one ordered
queue, and `flush()` writes it one transaction at a time per run, so events commit in causal
order; the SQL guard of the step write lets a step only move forward. An operator's cancel aborts
in-flight requests (`control()`); a pause lets them finish and starts nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta, UTC
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from app.engine.repository import EngineRepository, LeaseLost
from app.engine.steps import StepOutcome, branch, delay, http_call, pause, terminate, transform, webhook
from app.observability.metrics import RUNS_FINISHED, STEP_SECONDS, STEPS_FINISHED
from app.secrets.redaction import Redactor
from app.secrets.service import resolve_secrets
from app.workflows.definition import Dag
from app.workflows.templates import referenced_secrets, render, uses_secrets

if TYPE_CHECKING:
    from app.engine.worker import Worker

log = logging.getLogger("meshhook.engine")
DONE = frozenset({"succeeded", "skipped"})
SETTLED = frozenset({"succeeded", "skipped", "failed", "paused", "cancelled"})
PURE = {
    "webhook": webhook.execute,
    "transform": transform.execute,
    "branch": branch.execute,
    "terminate": terminate.execute,
}
SHORT_DELAY_S = 2.0  # delays shorter than this are waited out in the worker instead of a release
# Retry waits up to this long are waited out in the worker (no step slot is held meanwhile; the run
# keeps its place, as for a short delay); longer ones are durable: the run sleeps in the database.
SHORT_RETRY_WAIT_S = 1.0


def _now() -> datetime:
    return datetime.now(UTC)


def _merge_rows(rows: list[tuple]) -> list[tuple]:
    """One row per step key for a flush (the step write is one statement): later fields win, the
    step's input/start keep their first value, attempt entries add up."""
    if len({r[0] for r in rows}) == len(rows):
        return rows
    merged: dict[str, tuple] = {}
    for r in rows:
        old = merged.get(r[0])
        if old is None:
            merged[r[0]] = r
            continue
        atts = (old[10] or []) + (r[10] or [])
        merged[r[0]] = (
            r[0],
            r[1],
            r[2],
            r[3] if r[3] is not None else old[3],
            r[4],
            r[5],
            r[6],
            r[7] or old[7],
            r[8],
            r[9],
            atts or None,
            r[11] or old[11],
        )
    return list(merged.values())


class RunDriver:
    def __init__(self, worker: Worker, run, dag: Dag):
        self.w = worker
        self.run = run
        self.run_id = run["id"]
        self.project_id = run["project_id"]
        self.dag = dag
        self.status: dict[str, str] = {}
        self.attempt: dict[str, int] = {}
        self.outputs: dict[str, Any] = {}
        self.sleeping: dict[str, datetime] = {}
        self.inflight: dict[asyncio.Task, str] = {}
        self.stop_reason: str | None = run["control"]
        self.terminated: tuple[str, str | None] | None = None
        self.failed_any = False  # fail fast: after a failure no new step starts
        self._secrets: dict[str, str] | None = None
        # Every project secret, loaded once per run by load(): stage() masks them in everything
        # written (DESIGN §9.2), whether or not the step names `secrets`.
        self.redactor = Redactor(())
        self._pending_rows: list[tuple] = []
        self._pending_events: list[tuple] = []
        self._flush_lock = asyncio.Lock()  # one flush at a time per run: commits in staging order
        self.requests: dict[str, asyncio.Task] = {}  # in-flight http requests, aborted by a cancel
        self.failures: dict[str, int] = {}  # http steps: failed attempts so far (lost ones not counted)
        self.attempt_started: dict[str, datetime] = {}
        self.retry_waits: set[str] = set()  # sleeping keys that are http retry waits (not delays)
        self._poke = asyncio.Event()  # a control request arrived: the loop looks again
        self._control_check: asyncio.Task | None = None

    # ---- context -------------------------------------------------------------------
    async def secrets(self) -> dict[str, str]:
        if self._secrets is None:
            async with self.w.db.service_scope() as tx:
                self._secrets = await resolve_secrets(tx, self.w.cipher, self.project_id)
        return self._secrets

    def context(self, secrets: dict[str, str] | None) -> dict:
        return {
            "input": self.run["input"],
            "steps": self.outputs,
            "run": {"id": str(self.run_id)},
            "secrets": secrets or {},
        }

    def _cap(self, output: Any) -> tuple[Any, bool]:
        raw = orjson.dumps(output, default=str)
        limit = self.w.settings.max_output_bytes
        if len(raw) <= limit:
            return output, False
        return {
            "_truncated": True,
            "size_bytes": len(raw),
            "preview": raw[: limit // 2].decode("utf-8", errors="ignore"),
        }, True

    # ---- persistence -----------------------------------------------------------------
    def stage(
        self,
        key: str | None,
        status: str | None,
        *,
        input_=None,
        output=None,
        error=None,
        started=None,
        finished=None,
        wake_at=None,
        attempt_entry=None,
        event: str | None = None,
        payload=None,
        truncated: bool | None = None,
        attempt_started=None,
    ) -> None:
        """The one choke point every step row and event passes before it is written (status None:
        an event only). Staged in causal order; `flush()` writes them in that order.

        It is also the one choke point for secrets: everything a row or event holds passes here.
        Outputs are masked before the size cap cuts a preview and again after (see
        app/secrets/redaction.py)."""
        r = self.redactor
        payload = r.redact(payload)
        if status is not None and key is not None:
            input_, error, attempt_entry = r.redact(input_), r.redact(error), r.redact(attempt_entry)
            if truncated is None:
                truncated = False
                if output is not None:
                    output, truncated = self._cap(r.redact(output))
            output = r.redact(output)
            self._pending_rows.append(
                (
                    key,
                    status,
                    self.attempt.get(key, 0),
                    input_,
                    output,
                    truncated,
                    error,
                    started,
                    finished,
                    wake_at,
                    [attempt_entry] if attempt_entry else None,
                    attempt_started,
                )
            )
        if event:
            self._pending_events.append((event, key, payload or {}))

    async def flush(self, run_update: tuple | None = None, sleep_until: datetime | None = None) -> None:
        async with self._flush_lock:  # taken before the queue: what was staged first commits first
            rows, events = _merge_rows(self._pending_rows), self._pending_events
            self._pending_rows, self._pending_events = [], []
            if not rows and not events and run_update is None and sleep_until is None:
                return
            try:
                control = await self._write(rows, events, run_update, sleep_until)
            except (asyncpg.DataError, ValueError, TypeError, OverflowError) as exc:
                # A value the database (or its JSON encoder) refuses: fail the steps that carry one
                # with `unstorable_output` and write the rest. Never a driver crash, never a re-send.
                log.warning("unstorable step data", extra={"run_id": str(self.run_id), "error": type(exc).__name__})
                rows, events = await self._drop_unstorable(rows, events)
                control = await self._write(rows, events, run_update, sleep_until)
        if control and self.stop_reason is None:
            self.stop_reason = control

    async def _write(
        self, rows: list[tuple], events: list[tuple], run_update: tuple | None, sleep_until: datetime | None
    ) -> str | None:
        async with self.w.db.service_scope() as tx:
            repo = EngineRepository(tx)
            control = await repo.touch(self.run_id, self.w.id)  # fence + per-run ordering of events
            written = await repo.update_steps(self.run_id, rows)
            refused = {r[0] for r in rows} - written
            if refused:  # a late write the guard refused: its events go with it
                log.warning("stale step write refused", extra={"run_id": str(self.run_id), "steps": sorted(refused)})
                events = [e for e in events if e[1] not in refused]
            if run_update is not None:
                status, error, final, event, payload = run_update
                error, payload = self.redactor.redact(error), self.redactor.redact(payload)
                events = [*events, (event, None, payload)]
            await repo.add_events(self.run_id, self.project_id, events)
            if run_update is not None:
                await repo.finish_run(self.run_id, status, error, final)
            elif sleep_until is not None:
                await repo.sleep_run(self.run_id, sleep_until)
        return control

    async def _drop_unstorable(self, rows: list[tuple], events: list[tuple]) -> tuple[list[tuple], list[tuple]]:
        """Find the rows/events the database refuses (one probe each, only on this rare path) and
        replace them: the step fails with `unstorable_output`, its data is not kept."""
        bad: set[str | None] = set()
        for r in rows:
            if not await self._storable(r[3], r[4], r[6], r[10]):
                bad.add(r[0])
        for e in events:
            if e[1] not in bad and not await self._storable(e[2]):
                bad.add(e[1])
        now = _now()
        error = {"type": "unstorable_output", "message": "the step's result cannot be stored"}
        out_rows = []
        for r in rows:
            if r[0] not in bad:
                out_rows.append(r)
                continue
            key, status = r[0], r[1]
            if status in ("running", "pending"):  # the data before a request: keep the state, drop the data
                out_rows.append((key, status, r[2], None, None, False, None, r[7], None, r[9], None, r[11]))
                continue
            self._fail_unstorable(key)
            entry = {
                "attempt": r[2],
                "status": "failed",
                "started_at": (r[11] or r[7] or now).isoformat(),
                "finished_at": now.isoformat(),
                "error": error,
            }
            out_rows.append((key, "failed", r[2], None, None, False, error, r[7], now, None, [entry], r[11]))
        out_events = []
        for e in events:
            if e[1] in bad and e[1] is not None:
                if e[0].startswith("step_") and e[0] not in ("step_started", "step_retrying"):
                    out_events.append(("step_failed", e[1], {"error": error}))
                elif e[0] == "step_started":
                    out_events.append(e if await self._storable(e[2]) else (e[0], e[1], {}))
                continue
            out_events.append(e if await self._storable(e[2]) else (e[0], e[1], {}))
        return out_rows, out_events

    def _fail_unstorable(self, key: str) -> None:
        self.status[key] = "failed"
        self.failed_any = True
        self.outputs.pop(key, None)
        if self.terminated is not None and self.dag.steps[key].type == "terminate":
            self.terminated = None

    async def _storable(self, *values: Any) -> bool:
        try:
            async with self.w.db.service_scope() as tx:
                for v in values:
                    if v is not None:
                        await tx.fetchval("select $1::jsonb is not null", v)
            return True
        except (asyncpg.DataError, ValueError, TypeError, OverflowError):
            return False

    # ---- operator requests -------------------------------------------------------------
    def control(self, value: str | None) -> None:
        """A cancel/pause request for this run (notification, heartbeat poll or a flush saw it).
        Cancel aborts in-flight requests at once; pause lets them finish and starts nothing new."""
        if value is None or self.stop_reason == "cancel" or value == self.stop_reason:
            return
        if self.stop_reason is None or value == "cancel":
            self.stop_reason = value
        if value == "cancel":
            for task in list(self.requests.values()):
                task.cancel()
        self._poke.set()

    def check_control(self) -> None:
        """Read the run's control now (a notification named this run)."""
        if self._control_check is not None and not self._control_check.done():
            return

        async def check() -> None:
            with contextlib.suppress(Exception):
                async with self.w.db.service_scope() as tx:
                    self.control(await EngineRepository(tx).control(self.run_id))

        self._control_check = asyncio.create_task(check())

    # ---- scheduling --------------------------------------------------------------------
    def _edge_live(self, parent: str, handle: str | None) -> bool:
        if self.status.get(parent) != "succeeded":
            return False
        if handle is None:
            return True
        out = self.outputs.get(parent) or {}
        return bool(out.get("result")) == (handle == "true")

    def _ready(self):
        for key in self.dag.order:
            if self.status.get(key) != "pending":
                continue
            parents = self.dag.parents[key]
            if any(self.status.get(p) not in DONE for p, _ in parents):
                continue
            yield key, (not parents) or any(self._edge_live(p, h) for p, h in parents)

    async def _advance_inline(self) -> None:
        """Run every pure step that is ready, repeatedly, then start tasks for the others."""
        progressed = True
        while progressed and self._may_start():
            progressed = False
            # Lazily: `order` is topological and pure steps settle synchronously, so a chain of
            # pure steps resolves in one pass (a snapshot per pass made long chains O(n^2)).
            for key, live in self._ready():
                if not self._may_start():
                    break
                step = self.dag.steps[key]
                now = _now()
                if not live:
                    self.status[key] = "skipped"
                    self.stage(key, "skipped", finished=now, event="step_skipped")
                    progressed = True
                    continue
                if step.type == "http_call":
                    self.status[key] = "running"
                    self._start_http(key)
                    continue
                if step.type == "delay":
                    seconds = float(step.config["seconds"])
                    until = now + timedelta(seconds=seconds)
                    self.status[key] = "running"
                    self.attempt[key] = self.attempt.get(key, 0) + 1
                    self.sleeping[key] = until
                    self.stage(
                        key,
                        "running",
                        input_={"seconds": seconds, "until": until.isoformat()},
                        started=now,
                        wake_at=until,
                        event="step_started",
                        payload={"attempt": self.attempt[key], "until": until.isoformat()},
                    )
                    continue
                self._pure_step(key, now)
                progressed = True

    def _pure_step(self, key: str, now: datetime) -> None:
        step = self.dag.steps[key]
        t0 = time.perf_counter()
        ctx = self.context(None)
        ctx["_step_key"] = key
        try:
            if step.type == "pause":
                outcome = pause.execute(step.config, ctx, self.run)
            else:
                outcome = PURE[step.type](step.config, ctx)
        except Exception as exc:  # noqa: BLE001 - a step that blows up fails itself, never the worker (no crash loop)
            outcome = StepOutcome(
                "failed",
                error={
                    "type": "step_error",
                    "message": self.redactor.truncate((str(exc).splitlines() or [type(exc).__name__])[0], 500),
                },
            )
        self.attempt[key] = self.attempt.get(key, 0) + 1
        # One row write per pure step: its `running` state never outlives this transaction anyway.
        self.stage(key, None, event="step_started", payload={"attempt": self.attempt[key]})
        self._settle(key, outcome, now, t0, row_started=now)
        if step.type == "terminate" and outcome.output is not None:
            self.terminated = (step.config["status"], outcome.output.get("message") if outcome.output else None)

    def _settle(
        self,
        key: str,
        outcome: StepOutcome,
        started: datetime,
        t0: float,
        *,
        input_=None,
        row_started: datetime | None = None,
    ) -> None:
        step = self.dag.steps[key]
        finished = _now()
        try:
            output, truncated = (
                self._cap(self.redactor.redact(outcome.output)) if outcome.output is not None else (None, False)
            )
        except (TypeError, ValueError, OverflowError):  # e.g. an integer JSON cannot hold
            outcome = StepOutcome(
                "failed", error={"type": "unstorable_output", "message": "the step's result cannot be stored"}
            )
            output, truncated = None, False
        error = self.redactor.redact(outcome.error)
        self.status[key] = outcome.status
        if outcome.status == "failed":
            self.failed_any = True
        if outcome.status == "succeeded":
            # Downstream steps see what is stored (secrets redacted, oversized outputs truncated),
            # exactly as a resumed run that reuses this step will.
            self.outputs[key] = output
        entry = {
            "attempt": self.attempt.get(key, 0),
            "status": outcome.status,
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
        }
        if error:
            entry["error"] = error
        self.attempt_started.pop(key, None)
        self.stage(
            key,
            outcome.status,
            input_=input_,
            output=output,
            error=error,
            started=row_started,
            finished=finished,
            attempt_entry=entry,
            event=f"step_{outcome.status}",
            truncated=truncated,
            payload={"attempt": self.attempt.get(key, 0), **({"error": error} if error else {})},
        )
        STEPS_FINISHED.labels(step.type, outcome.status).inc()
        STEP_SECONDS.labels(step.type).observe(time.perf_counter() - t0)

    def _start_http(self, key: str) -> None:
        task = asyncio.create_task(self._http_step(key))
        self.inflight[task] = key

    async def _http_step(self, key: str) -> None:
        """One attempt of an http_call step: store the attempt number, send, then settle the step or
        schedule the next attempt (a retry wait, durable when long)."""
        step = self.dag.steps[key]
        async with self.w.step_slot(self.project_id):
            if not self._may_start():
                if self.status.get(key) == "running" and self.attempt.get(key, 0) == 0:
                    self.status[key] = "pending"  # never started: the settle phase decides
                elif self.status.get(key) == "running":
                    self.sleeping[key] = _now()  # between attempts: cancel/pause settle it
                    self.retry_waits.add(key)
                return
            secrets = await self.secrets() if uses_secrets(step.config) else {}
            missing = sorted(referenced_secrets(step.config) - set(secrets))
            try:
                if missing:  # never send "Bearer " with an empty token
                    raise LookupError(f"secret(s) {missing} are not set in this project")
                config = render(step.config, self.context(secrets))
                shown = render(step.config, self.context({k: "***" for k in secrets}))
            except Exception as exc:  # noqa: BLE001 - a template that fails at run time fails the step
                self.attempt[key] = self.attempt.get(key, 0) + 1
                # JMESPath type errors quote the offending value, which may be a secret: redact.
                self._settle(
                    key,
                    StepOutcome(
                        "failed",
                        error={
                            # a limit hit by the template (expression_limit, unstorable_output) says so
                            "type": "secret_missing" if missing else getattr(exc, "error_type", "template_error"),
                            "message": self.redactor.truncate(str(exc), 500),
                        },
                    ),
                    _now(),
                    time.perf_counter(),
                )
                await self.flush()
                return
            # The attempt number is stored (committed) before the request goes out.
            self.attempt[key] = self.attempt.get(key, 0) + 1
            started = _now()
            self.attempt_started[key] = started
            t0 = time.perf_counter()
            first = self.attempt[key] == 1
            self.stage(
                key,
                "running",
                input_=shown if first else None,
                started=started if first else None,
                attempt_started=started,
                event="step_started",
                payload={"attempt": self.attempt[key]},
            )
            await self.flush()
            if self.stop_reason == "cancel":  # the flush brought a cancel: this attempt is not sent
                self._settle(
                    key,
                    StepOutcome(
                        "cancelled", error={"type": "cancelled", "message": "cancelled before the request was sent"}
                    ),
                    started,
                    t0,
                )
                await self.flush()
                return

            request = asyncio.create_task(
                http_call.attempt(self.w.http, config, f"{self.run_id}:{key}", redactor=self.redactor)
            )
            self.requests[key] = request
            try:
                await asyncio.wait({request})
            except asyncio.CancelledError:
                request.cancel()
                raise
            finally:
                self.requests.pop(key, None)
            if request.cancelled():  # aborted by an operator's cancel
                outcome = StepOutcome(
                    "cancelled", error={"type": "cancelled", "message": "the request was aborted by a cancel"}
                )
                retryable, retry_after = False, None
            else:
                try:
                    result = request.result()
                    outcome, retryable, retry_after = result.outcome, result.retryable, result.retry_after
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. an invalid rendered URL: fail the step, not the worker
                    outcome = StepOutcome(
                        "failed",
                        error={
                            "type": "request_error",
                            "message": self.redactor.truncate((str(exc).splitlines() or [type(exc).__name__])[0], 500),
                        },
                    )
                    retryable, retry_after = False, None
            if retryable:
                self.failures[key] = self.failures.get(key, 0) + 1
                # Scheduled even when the run is stopping: the settle phase turns a waiting step
                # into cancelled/paused, and a SIGTERM hands the wait over to the next owner.
                if self.failures[key] < max(1, http_call.max_attempts(config)):
                    self._schedule_retry(key, outcome, started, config, retry_after)
                    await self.flush()
                    return
            self._settle(key, outcome, started, t0)
            await self.flush()

    def _schedule_retry(
        self, key: str, outcome: StepOutcome, started: datetime, config: dict, retry_after: str | None
    ) -> None:
        wait = http_call.backoff_s(config, self.failures[key], retry_after)
        finished = _now()
        until = finished + timedelta(seconds=wait)
        error = self.redactor.redact(outcome.error)
        entry = {
            "attempt": self.attempt[key],
            "status": "retrying",
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "error": error,
            "retry_in_s": round(wait, 3),
        }
        self.sleeping[key] = until
        self.retry_waits.add(key)
        self.attempt_started.pop(key, None)
        self.stage(
            key,
            "running",
            wake_at=until,
            attempt_entry=entry,
            event="step_retrying",
            payload={
                "attempt": self.attempt[key],
                "error": error,
                "retry_in_s": round(wait, 3),
                "next_attempt_at": until.isoformat(),
            },
        )

    # ---- the loop ---------------------------------------------------------------------
    async def load(self) -> None:
        async with self.w.db.service_scope() as tx:
            rows = await EngineRepository(tx).steps(self.run_id)
            self._secrets = await resolve_secrets(tx, self.w.cipher, self.project_id)
        self.redactor = Redactor(self._secrets.values())
        now = _now()
        for r in rows:
            key = r["step_key"]
            if key not in self.dag.steps:
                continue
            self.status[key] = r["status"]
            self.attempt[key] = r["attempt"]
            if (
                r["step_type"] == "terminate"
                and r["status"] in ("succeeded", "failed")
                and isinstance(r["output"], dict)
                and r["output"].get("status") in ("succeeded", "failed")
            ):
                # A terminate step settled before a takeover still ends the run: nothing after it runs.
                self.terminated = (r["output"]["status"], r["output"].get("message"))
            if r["status"] == "succeeded":
                self.outputs[key] = r["output"]
            elif r["status"] == "failed":
                self.failed_any = True  # fail fast holds across a takeover too
            elif r["status"] == "running":
                attempts = r["attempts"] or []
                self.failures[key] = sum(1 for a in attempts if isinstance(a, dict) and a.get("status") == "retrying")
                if r["wake_at"] is not None:
                    # A delay, or an http step waiting for its next attempt: sleep until then.
                    self.sleeping[key] = r["wake_at"]
                    if r["step_type"] == "http_call":
                        self.retry_waits.add(key)
                elif r["step_type"] == "http_call" and any(
                    isinstance(a, dict) and a.get("attempt") == r["attempt"] for a in attempts
                ):
                    # Its current attempt is already closed (e.g. recorded lost by an owner that died
                    # before sending the next one): the next attempt is due now.
                    self.sleeping[key] = now
                    self.retry_waits.add(key)
                elif r["step_type"] == "http_call":
                    # Its worker died with this attempt in flight (the request may or may not have gone
                    # out): record the attempt as lost, never reuse its number; the next one follows.
                    lost_started = r["attempt_started_at"] or r["started_at"] or now
                    entry = {
                        "attempt": r["attempt"],
                        "status": "worker_lost",
                        "started_at": lost_started.isoformat(),
                        "finished_at": now.isoformat(),
                        "error": {"type": "worker_lost", "message": "the worker running this attempt was lost"},
                    }
                    self.stage(
                        key,
                        "running",
                        attempt_entry=entry,
                        event="step_retrying",
                        payload={"reason": "worker lost", "attempt": r["attempt"]},
                    )
                    self.sleeping[key] = now
                    self.retry_waits.add(key)
                else:  # a step type that is never left running (pure steps settle in one write)
                    self.status[key] = "pending"
        for key in self.dag.steps:
            self.status.setdefault(key, "pending")

    async def drive(self) -> None:
        try:
            if self.run["old_status"] == "queued" and self.run["trigger"] in ("api", "webhook"):
                # Never driven before, created with every step pending (attempt 0): no step to read,
                # and the project's secrets (for the redactor) only when it has any.
                for key in self.dag.steps:
                    self.status[key] = "pending"
                if self.run["has_secrets"]:
                    self.redactor = Redactor((await self.secrets()).values())
                else:
                    self._secrets = {}
            else:
                await self.load()
            while True:
                if self._may_start():
                    self._wake_due()
                    await self._advance_inline()
                    if self._pending_rows or self._pending_events:
                        if not self.inflight and not self.sleeping and not self.w.stopping:
                            # Nothing left to wait for: settle in the same transaction (one commit
                            # per pure-only run instead of two; ~2x transform steps/s).
                            await self._settle_run()
                            return
                        await self.flush()
                        continue  # a flush may have brought a control request
                if self.inflight:
                    timeout = self._next_wake_in()
                    self._poke.clear()
                    poke = asyncio.create_task(self._poke.wait())
                    try:
                        done, _ = await asyncio.wait(
                            [*self.inflight, poke], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        poke.cancel()
                    done.discard(poke)
                    for task in done:
                        self.inflight.pop(task, None)
                        task.result()  # LeaseLost and bugs propagate
                    continue
                if self.w.stopping:
                    # SIGTERM: nothing is in flight any more; hand the run back at once (durably,
                    # delays included) instead of settling it half-done.
                    await self.flush()
                    async with self.w.db.service_scope() as tx:
                        await EngineRepository(tx).release(self.w.id, [self.run_id], notify=True)
                    return
                if self.sleeping and self._may_start():
                    wait = self._next_wake_in()
                    if wait is not None and wait > self._in_process_limit():
                        await self.flush(sleep_until=min(self.sleeping.values()))
                        self.w.wake_later(wait)
                        return
                    self._poke.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._poke.wait(), max(wait or 0, 0))
                    continue
                await self._settle_run()
                return
        except LeaseLost:
            log.warning("lease lost; another worker has the run", extra={"run_id": str(self.run_id)})
        finally:
            for task in list(self.inflight):
                task.cancel()
            for task in list(self.inflight):
                with contextlib.suppress(BaseException):
                    await task
            if self._control_check is not None:
                self._control_check.cancel()

    def _in_process_limit(self) -> float:
        """How long the driver may wait in the worker: a short delay, or a short retry wait."""
        soonest = min(self.sleeping, key=lambda k: self.sleeping[k])
        return SHORT_RETRY_WAIT_S if soonest in self.retry_waits else SHORT_DELAY_S

    def _may_start(self) -> bool:
        return self.stop_reason is None and self.terminated is None and not self.failed_any and not self.w.stopping

    def _next_wake_in(self) -> float | None:
        if not self.sleeping:
            return None
        return max((min(self.sleeping.values()) - _now()).total_seconds(), 0.0)

    def _wake_due(self) -> None:
        now = _now()
        for key, until in list(self.sleeping.items()):
            if until <= now:
                del self.sleeping[key]
                if key in self.retry_waits:
                    self.retry_waits.discard(key)
                    self._start_http(key)  # the next attempt (its number is stored before it is sent)
                    continue
                seconds = float(self.dag.steps[key].config["seconds"])
                self._settle(key, delay.finished(seconds), until - timedelta(seconds=seconds), time.perf_counter())

    async def _settle_run(self) -> None:
        now = _now()
        error: dict[str, Any] | None
        if self.stop_reason == "cancel":
            for key, st in self.status.items():
                if st not in SETTLED or st == "paused":
                    self.status[key] = "cancelled"
                    self.stage(key, "cancelled", finished=now, event="step_cancelled")
            status, error = "cancelled", None
        elif self.stop_reason == "pause" and not self.failed_any and self._frontier():
            for key in self._frontier():
                self.status[key] = "paused"
                self.stage(key, "paused", event="step_paused", payload={"by": "operator"})
            status, error = "paused", None
        elif self.terminated is not None:
            for key, st in self.status.items():
                if st == "pending":
                    self.status[key] = "skipped"
                    self.stage(key, "skipped", finished=now, event="step_skipped", payload={"reason": "terminated"})
            status = self.terminated[0]
            error = (
                {"type": "terminated", "message": self.terminated[1] or "terminated by workflow"}
                if status == "failed"
                else None
            )
        else:
            failed = [k for k in self.dag.order if self.status.get(k) == "failed"]
            if failed:
                for key in list(self.sleeping):
                    self.status[key] = "cancelled"
                    self.stage(key, "cancelled", finished=now, event="step_cancelled", payload={"reason": "run failed"})
                first = failed[0]
                status = "failed"
                error = {
                    "step": first,
                    "type": "step_failed",
                    "message": f"step {first!r} failed",
                    "failed_steps": failed,
                }
            elif any(s == "paused" for s in self.status.values()):
                status, error = "paused", None
            elif all(s in DONE for s in self.status.values()):
                status, error = "succeeded", None
            else:
                stuck = [k for k, s in self.status.items() if s not in DONE]
                status, error = "failed", {"type": "stalled", "message": f"steps {stuck} cannot run"}
        final = status in ("succeeded", "failed", "cancelled")
        await self.flush(run_update=(status, error, final, f"run_{status}", {"error": error} if error else {}))
        RUNS_FINISHED.labels(status).inc()

    def _frontier(self) -> list[str]:
        keys = [k for k, _live in self._ready()]
        keys += [k for k in self.sleeping]
        return keys
