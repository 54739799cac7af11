"""Drives one claimed run: decides which steps are ready, executes them, persists every
transition with its event in one transaction, and settles the run's status.

Pure steps (webhook, transform, branch, pause, terminate) run inline and are written in
batches; http_call runs as a task (parallel branches overlap) and is marked `running`
before the request goes out; delay puts the run to sleep in the database.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta, UTC
from typing import TYPE_CHECKING, Any

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
PURE = {"webhook": webhook.execute, "transform": transform.execute, "branch": branch.execute,
        "terminate": terminate.execute}
SHORT_DELAY_S = 2.0  # delays shorter than this are waited out in the worker instead of a release


def _now() -> datetime:
    return datetime.now(UTC)


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

    # ---- context -------------------------------------------------------------------
    async def secrets(self) -> dict[str, str]:
        if self._secrets is None:
            async with self.w.db.service_scope() as tx:
                self._secrets = await resolve_secrets(tx, self.w.cipher, self.project_id)
        return self._secrets

    def context(self, secrets: dict[str, str] | None) -> dict:
        return {"input": self.run["input"], "steps": self.outputs, "run": {"id": str(self.run_id)},
                "secrets": secrets or {}}

    def _cap(self, output: Any) -> tuple[Any, bool]:
        raw = orjson.dumps(output, default=str)
        limit = self.w.settings.max_output_bytes
        if len(raw) <= limit:
            return output, False
        return {"_truncated": True, "size_bytes": len(raw),
                "preview": raw[: limit // 2].decode("utf-8", errors="ignore")}, True

    # ---- persistence -----------------------------------------------------------------
    def stage(self, key: str, status: str, *, input_=None, output=None, error=None, started=None,
              finished=None, wake_at=None, attempt_entry=None, event: str | None = None, payload=None,
              truncated: bool | None = None) -> None:
        # The one choke point for secrets: everything a row or event holds passes here. Outputs
        # are masked before the size cap cuts a preview and again after (see app/secrets/redaction.py).
        r = self.redactor
        input_, error, attempt_entry, payload = r.redact(input_), r.redact(error), r.redact(attempt_entry), \
            r.redact(payload)
        if truncated is None:
            truncated = False
            if output is not None:
                output, truncated = self._cap(r.redact(output))
        output = r.redact(output)
        self._pending_rows.append((key, status, self.attempt.get(key, 0), input_, output, truncated, error, started,
                                   finished, wake_at, [attempt_entry] if attempt_entry else None))
        if event:
            self._pending_events.append((event, key, payload or {}))

    async def flush(self, run_update: tuple | None = None, sleep_until: datetime | None = None) -> None:
        rows, events = self._pending_rows, self._pending_events
        self._pending_rows, self._pending_events = [], []
        if not rows and not events and run_update is None and sleep_until is None:
            return
        async with self.w.db.service_scope() as tx:
            repo = EngineRepository(tx)
            control = await repo.touch(self.run_id, self.w.id)  # fence + per-run ordering of events
            await repo.update_steps(self.run_id, rows)
            if run_update is not None:
                status, error, final, event, payload = run_update
                error, payload = self.redactor.redact(error), self.redactor.redact(payload)
                events = [*events, (event, None, payload)]
            await repo.add_events(self.run_id, self.project_id, events)
            if run_update is not None:
                await repo.finish_run(self.run_id, status, error, final)
            elif sleep_until is not None:
                await repo.sleep_run(self.run_id, sleep_until)
        if control and self.stop_reason is None:
            self.stop_reason = control

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
                    task = asyncio.create_task(self._http_step(key))
                    self.inflight[task] = key
                    continue
                if step.type == "delay":
                    seconds = float(step.config["seconds"])
                    until = now + timedelta(seconds=seconds)
                    self.status[key] = "running"
                    self.attempt[key] = self.attempt.get(key, 0) + 1
                    self.sleeping[key] = until
                    self.stage(key, "running", input_={"seconds": seconds, "until": until.isoformat()},
                               started=now, wake_at=until, event="step_started",
                               payload={"attempt": self.attempt[key], "until": until.isoformat()})
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
            outcome = StepOutcome("failed", error={"type": "step_error", "message": self.redactor.truncate(
                (str(exc).splitlines() or [type(exc).__name__])[0], 500)})
        self.attempt[key] = self.attempt.get(key, 0) + 1
        # One row write per pure step: its `running` state never outlives this transaction anyway.
        self._pending_events.append(("step_started", key, {"attempt": self.attempt[key]}))
        self._settle(key, outcome, now, t0, row_started=now)
        if step.type == "terminate" and outcome.output is not None:
            self.terminated = (step.config["status"], outcome.output.get("message") if outcome.output else None)

    def _settle(self, key: str, outcome: StepOutcome, started: datetime, t0: float, *,
                input_=None, row_started: datetime | None = None) -> None:
        step = self.dag.steps[key]
        finished = _now()
        output, truncated = self._cap(self.redactor.redact(outcome.output)) \
            if outcome.output is not None else (None, False)
        error = self.redactor.redact(outcome.error)
        self.status[key] = outcome.status
        if outcome.status == "failed":
            self.failed_any = True
        if outcome.status == "succeeded":
            # Downstream steps see what is stored (secrets redacted, oversized outputs truncated),
            # exactly as a resumed run that reuses this step will.
            self.outputs[key] = output
        entry = {"attempt": self.attempt.get(key, 0), "status": outcome.status,
                 "started_at": started.isoformat(), "finished_at": finished.isoformat()}
        if error:
            entry["error"] = error
        self.stage(key, outcome.status, input_=input_, output=output, error=error, started=row_started,
                   finished=finished, attempt_entry=entry, event=f"step_{outcome.status}", truncated=truncated,
                   payload={"attempt": self.attempt.get(key, 0), **({"error": error} if error else {})})
        STEPS_FINISHED.labels(step.type, outcome.status).inc()
        STEP_SECONDS.labels(step.type).observe(time.perf_counter() - t0)

    async def _http_step(self, key: str) -> None:
        step = self.dag.steps[key]
        async with self.w.step_slots:
            if not self._may_start():
                self.status[key] = "pending"  # never started: the settle phase decides
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
                self._settle(key, StepOutcome("failed", error={
                    "type": "secret_missing" if missing else "template_error",
                    "message": self.redactor.truncate(str(exc), 500)}), _now(), time.perf_counter())
                await self.flush()
                return
            self.attempt[key] = self.attempt.get(key, 0) + 1
            started = _now()
            t0 = time.perf_counter()
            self.stage(key, "running", input_=shown, started=started, event="step_started",
                       payload={"attempt": self.attempt[key]})
            await self.flush()

            async def on_retry(attempt: int, info: dict) -> None:
                info = self.redactor.redact(info)
                self.stage(key, "running", attempt_entry=info, event="step_retrying", payload=info)
                self.attempt[key] += 1
                await self.flush()

            try:
                outcome = await http_call.execute(self.w.http, config, f"{self.run_id}:{key}", on_retry,
                                                  redactor=self.redactor)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. an invalid rendered URL: fail the step, not the worker
                outcome = StepOutcome("failed", error={"type": "request_error", "message": self.redactor.truncate(
                    (str(exc).splitlines() or [type(exc).__name__])[0], 500)})
            self._settle(key, outcome, started, t0)
            await self.flush()

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
            if r["step_type"] == "terminate" and r["status"] in ("succeeded", "failed") \
                    and isinstance(r["output"], dict) and r["output"].get("status") in ("succeeded", "failed"):
                # A terminate step settled before a takeover still ends the run: nothing after it runs.
                self.terminated = (r["output"]["status"], r["output"].get("message"))
            if r["status"] == "succeeded":
                self.outputs[key] = r["output"]
            elif r["status"] == "failed":
                self.failed_any = True  # fail fast holds across a takeover too
            elif r["status"] == "running":
                if r["step_type"] == "delay" and r["wake_at"] is not None:
                    self.sleeping[key] = r["wake_at"]
                else:
                    # Left running by a worker that died: execute again (same Idempotency-Key).
                    self.status[key] = "pending"
                    self.stage(key, "pending", event="step_retrying",
                               payload={"reason": "worker lost", "attempt": r["attempt"]})
        for key in self.dag.steps:
            self.status.setdefault(key, "pending")
        del now

    async def drive(self) -> None:
        try:
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
                    done, _ = await asyncio.wait(list(self.inflight), timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
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
                    if wait is not None and wait > SHORT_DELAY_S:
                        await self.flush(sleep_until=min(self.sleeping.values()))
                        self.w.wake_later(wait)
                        return
                    await asyncio.sleep(max(wait or 0, 0))
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
            error = {"type": "terminated", "message": self.terminated[1] or "terminated by workflow"} \
                if status == "failed" else None
        else:
            failed = [k for k in self.dag.order if self.status.get(k) == "failed"]
            if failed:
                for key in list(self.sleeping):
                    self.status[key] = "cancelled"
                    self.stage(key, "cancelled", finished=now, event="step_cancelled", payload={"reason": "run failed"})
                first = failed[0]
                status = "failed"
                error = {"step": first, "type": "step_failed", "message": f"step {first!r} failed",
                         "failed_steps": failed}
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
