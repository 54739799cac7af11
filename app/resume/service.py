"""Resume from step (DESIGN §5): the permission check, state validation, plan, and the one
transaction that writes the new run, its copied steps, events, audit row and wake-up.

Every attempt leaves exactly one `run.resume` audit row: accepted ones in the resume's own
transaction, denied and rejected ones in a service-scope transaction after the caller's
transaction has rolled back (a non-member cannot write to a project they cannot see).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import orjson
from pydantic import ValidationError

from app.audit.repository import AuditRepository
from app.audit.service import RequestFacts
from app.auth.jwt import User
from app.db import ids
from app.db.engine import Database, Tx
from app.errors import (
    Conflict,
    DomainError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
)
from app.observability.metrics import RESUME_SECONDS, RESUME_TOTAL
from app.projects.service import RANK
from app.resume.plan import (
    FINISHED,
    RESUMABLE_RUN,
    RESUMABLE_STEP,
    ResumePlan,
    build_resume_plan,
    eligible_steps,
    rerunnable_steps,
    resolved_by,
)
from app.resume.repository import IdempotencyRepository, ResumeRepository
from app.resume.schemas import ResumeRequest
from app.runs.repository import RunRepository
from app.runs.service import pending_rows, run_for, step_dict
from app.secrets.crypto import Cipher
from app.secrets.redaction import Redactor
from app.secrets.service import resolve_secrets
from app.settings import get_settings
from app.workflows.repository import WorkflowRepository
from app.workflows.definition import STEP_KEY
from app.workflows.service import dag_cache

log = logging.getLogger("meshhook.resume")
ACTION = "run.resume"


def _errors_of(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", *[str(p) for p in e["loc"]]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def parse_request(raw: bytes) -> ResumeRequest:
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise Unprocessable("The body is not valid JSON.", errors=[{"loc": ["body"], "msg": "invalid JSON"}]) from None
    if not isinstance(data, dict):
        raise Unprocessable("The body must be a JSON object.", errors=[{"loc": ["body"], "msg": "must be an object"}])
    try:
        return ResumeRequest.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable("The resume request is not valid.", errors=_errors_of(exc)) from None


async def _plan_for(
    tx: Tx, run, statuses: dict[str, str], req_step: str, version_choice, step_loc: str = "body", *, rerun: bool = False
) -> tuple[ResumePlan, int, Any, Any]:
    """Validate state and build the plan; raises 422/409 as DESIGN §5 and §10 say."""
    dag = await dag_cache.get(tx, run["workflow_id"], run["workflow_version"])
    if dag is None:
        raise Conflict("The run's workflow version cannot be loaded, so it cannot be resumed.", eligible_steps=[])
    eligible = eligible_steps(dag, run["status"], statuses)
    resolver = resolved_by(run)
    rerunnable = rerunnable_steps(dag, run["status"], resolver is not None, statuses)
    if req_step not in dag.steps:
        raise Unprocessable(
            f"The workflow has no step {req_step!r}.",
            eligible_steps=eligible,
            rerunnable_steps=rerunnable,
            errors=[{"loc": [step_loc, "from_step"], "msg": "unknown step"}],
        )
    if resolver is not None and not rerun:
        # §10.1: a second approval of a pause whose first approval already finished must not run the
        # downstream steps again; a deliberate re-run says so.
        raise Conflict(
            f'This run was already resolved by run {resolver}: its work is done. Send "rerun": true '
            "to run it again anyway.",
            resolved_by=str(resolver),
            eligible_steps=eligible,
            rerunnable_steps=rerunnable,
        )
    allowed = set(eligible) | set(rerunnable) if rerun else set(eligible)
    if req_step not in allowed:
        if rerun and run["status"] not in FINISHED and run["status"] not in RESUMABLE_RUN:
            why = (
                f"the run is {run['status']}; only a succeeded, failed, cancelled or resolved run can be re-run, "
                "and a failed, paused or cancelled one resumed"
            )
        elif rerun:
            why = f"an ancestor of step {req_step!r} did not succeed"
        elif run["status"] not in RESUMABLE_RUN:
            why = f"the run is {run['status']}; only failed, paused or cancelled runs can be resumed"
            if run["status"] in FINISHED:
                why += ' (send "rerun": true to re-execute a finished run)'
        elif statuses.get(req_step) not in RESUMABLE_STEP:
            why = f"step {req_step!r} is {statuses.get(req_step)}; only a failed, paused or cancelled step can be resumed from"
        else:
            why = f"an ancestor of step {req_step!r} did not succeed"
        raise Conflict(f"Cannot resume from {req_step!r}: {why}.", eligible_steps=eligible, rerunnable_steps=rerunnable)
    if version_choice == "original":
        version, new_dag = run["workflow_version"], dag
    else:
        if version_choice == "latest":
            version = (await WorkflowRepository(tx).get(run["workflow_id"]))["latest_version"]
        else:
            version = int(version_choice)
        loaded = dag if version == run["workflow_version"] else await dag_cache.get(tx, run["workflow_id"], version)
        if loaded is None:
            raise Unprocessable(
                f"Workflow version {version} does not exist.",
                errors=[{"loc": ["body", "workflow_version"], "msg": "no such version"}],
            )
        new_dag = loaded
        if req_step not in new_dag.steps:
            raise Unprocessable(
                f"Version {version} has no step {req_step!r}.",
                errors=[{"loc": ["body", "from_step"], "msg": "step not in the chosen version"}],
            )
    plan = build_resume_plan(dag, new_dag, statuses, req_step, eligible)
    return replace(plan, rerunnable_steps=rerunnable), version, dag, new_dag


def apply_outputs(plan: ResumePlan, dag, outputs: dict[str, Any] | None, max_bytes: int) -> tuple[ResumePlan, dict]:
    """§10.2: the steps given an output move from `rerun` to `override`. Only steps the plan re-executes
    may be named (422 naming each other key); each output obeys the step-output size limit (413).
    Returns the plan and each output's canonical JSON (what is stored and hashed for the audit row)."""
    if not outputs:
        return plan, {}
    rerun = set(plan.rerun)
    errors = []
    for key in outputs:
        if key not in dag.steps:
            errors.append({"loc": ["body", "outputs", key], "msg": f"the workflow has no step {key!r}"})
        elif key not in rerun:
            errors.append(
                {
                    "loc": ["body", "outputs", key],
                    "msg": f"step {key!r} is reused by this resume, not re-executed; only steps in the plan's "
                    "rerun set can be given an output",
                }
            )
    if errors:
        names = ", ".join(repr(e["loc"][-1]) for e in errors)
        raise Unprocessable(
            f"Outputs can only be given for steps this resume re-executes: {names}.", errors=errors, rerun=plan.rerun
        )
    encoded = {k: orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for k, v in outputs.items()}
    big = [k for k, raw in encoded.items() if len(raw) > max_bytes]
    if big:
        raise PayloadTooLarge(
            f"The output of step(s) {', '.join(map(repr, big))} exceeds the step-output limit of "
            f"{max_bytes} bytes (MESHHOOK_MAX_OUTPUT_BYTES).",
            errors=[{"loc": ["body", "outputs", k], "msg": f"{len(encoded[k])} bytes > {max_bytes}"} for k in big],
        )
    order = [k for k in dag.order if k in outputs]
    return replace(plan, rerun=[k for k in plan.rerun if k not in outputs], override=order), encoded


def _plan_body(plan: ResumePlan) -> dict:
    return {
        "from_step": plan.from_step,
        "reuse": plan.reuse,
        "rerun": plan.rerun,
        "override": plan.override,
        "eligible_steps": plan.eligible_steps,
        "rerunnable_steps": plan.rerunnable_steps,
    }


async def resume_plan(tx: Tx, run_id: uuid.UUID, from_step: str) -> dict:
    """GET /runs/{id}/resume-plan?from_step=…"""
    run = await run_for(tx, run_id, "viewer")
    statuses = {r["step_key"]: r["status"] for r in await RunRepository(tx).step_statuses(run_id)}
    plan, *_ = await _plan_for(tx, run, statuses, from_step, "original", step_loc="query")
    return _plan_body(plan)


async def resume_plan_for(tx: Tx, run_id: uuid.UUID, req: ResumeRequest) -> dict:
    """POST /runs/{id}/resume-plan: the same body as a resume; nothing is written."""
    run = await run_for(tx, run_id, "viewer")
    statuses = {r["step_key"]: r["status"] for r in await RunRepository(tx).step_statuses(run_id)}
    plan, _version, _old, new_dag = await _plan_for(
        tx, run, statuses, req.from_step, req.workflow_version, rerun=req.rerun
    )
    plan, _ = apply_outputs(plan, new_dag, req.outputs, get_settings().max_output_bytes)
    return _plan_body(plan)


def _hash(req: ResumeRequest) -> str:
    body = req.model_dump(mode="json")
    # The §10.2 fields count only when sent, so a key recorded before they existed still matches.
    if not body["rerun"]:
        del body["rerun"]
    if body["outputs"] is None:
        del body["outputs"]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class _Replay(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body


async def _resume_tx(
    tx: Tx,
    user: User,
    run_id: uuid.UUID,
    req: ResumeRequest,
    idem_key: str | None,
    facts: RequestFacts,
    ctx: dict,
    *,
    request_hash: str | None = None,
) -> dict:
    # Also takes the lineage lock (app/resume/repository.py _OPEN), so the resolved/active guard of the
    # write below sees every other resume of this lineage.
    run = await ResumeRepository(tx).open(run_id)
    if run is None or run["caller_role"] is None:
        raise NotFound("No such run.")
    ctx["project_id"] = run["project_id"]
    role = run["caller_role"]
    if RANK[role] < RANK["editor"]:
        raise Forbidden(f"Resuming needs the editor or owner role; you are {role}.")
    scope = f"POST /runs/{run_id}/resume"
    req_hash = request_hash or _hash(req)  # of the body as sent, so a retry matches
    if idem_key is not None:
        prior = await IdempotencyRepository(tx).get(user.id, scope, idem_key)
        if prior is not None:
            if prior["request_hash"] != req_hash:
                raise Unprocessable(
                    "This Idempotency-Key was used with a different request body.",
                    errors=[{"loc": ["header", "idempotency-key"], "msg": "reused with another body"}],
                )
            ctx["replay"] = True
            raise _Replay(prior["status_code"], prior["response"])
    statuses = dict(zip(run["step_keys"], run["step_statuses"], strict=True))
    parent = dict(run)
    plan, version, _old_dag, new_dag = await _plan_for(
        tx, parent, statuses, req.from_step, req.workflow_version, rerun=req.rerun
    )
    plan, encoded = apply_outputs(plan, new_dag, req.outputs, get_settings().max_output_bytes)

    new_id = ids.new_id()
    ctx["new_run_id"] = new_id
    reuse = set(plan.reuse)
    positions = {k: i for i, k in enumerate(new_dag.order)}
    pending = pending_rows(new_dag, reuse | set(plan.override))
    overrides = (
        list(plan.override),
        [new_dag.steps[k].type for k in plan.override],
        [positions[k] for k in plan.override],
        # as JSON text: asyncpg would read a list inside a jsonb[] parameter as another array dimension
        [encoded[k].decode() for k in plan.override],
    )
    summary = {
        "from_step": req.from_step,
        "reused": plan.reuse,
        "rerun": plan.rerun,
        "override": plan.override,
        "rerun_requested": req.rerun,
        "workflow_version": version,
    }
    new_input = req.input if req.input is not None else run["input"]
    rows = await ResumeRepository(tx).write(
        new_id=new_id,
        parent=run,
        version=version,
        input=new_input,
        from_step=req.from_step,
        reason=req.reason,
        actor=user.id,
        pending=pending,
        reuse_keys=plan.reuse,
        reuse_positions=[positions[k] for k in plan.reuse],
        child_payload={"parent_run_id": str(run_id), **summary},
        parent_payload={"child_run_id": str(new_id), **summary},
        request_id=facts.request_id,
        ip=facts.ip,
        user_agent=facts.user_agent,
        audit_detail={
            "workflow_version": version,
            "reused": len(plan.reuse),
            "rerun": len(plan.rerun),
            "idempotency_key": idem_key is not None,
            "rerun_requested": req.rerun,
            # §10.2: the keys and a SHA-256 of each output's canonical JSON, never the value
            "override_sha256": {k: hashlib.sha256(encoded[k]).hexdigest() for k in plan.override},
        },
        rerun=req.rerun,
        overrides=overrides,
    )
    if not rows:
        # The lineage guard refused: resolved meanwhile, or a run of this lineage is queued or running.
        why = await ResumeRepository(tx).lineage_conflict(run_id)
        if why is not None and why["resolved_by"] is not None and not req.rerun:
            raise Conflict(
                f"This run was already resolved by run {why['resolved_by']}: its work is done. Send "
                '"rerun": true to run it again anyway.',
                resolved_by=str(why["resolved_by"]),
            )
        active = why["active_run_id"] if why is not None else None
        raise Conflict(
            "A run of this run's lineage is already queued or running.", active_run_id=str(active) if active else None
        )
    body = _new_run_view(new_id, run, version, new_input, req, user, rows, pending)
    if idem_key is not None:
        await IdempotencyRepository(tx).put(
            user.id, scope, idem_key, req_hash, 202, orjson.loads(orjson.dumps(body, default=str))
        )
    return body


def _new_run_view(new_id, parent, version, new_input, req: ResumeRequest, user: User, rows, pending) -> dict:
    """The 202 body (the shape of GET /runs/{id}) from what the write returned, without reading it back."""
    steps = []
    for r in rows:
        if r["step_key"] is not None:
            steps.append((r["position"], step_dict(r, set())))
    for key, typ, pos in zip(*pending, strict=True):
        steps.append(
            (
                pos,
                {
                    "key": key,
                    "type": typ,
                    "status": "pending",
                    "attempt": 0,
                    "input": None,
                    "output": None,
                    "output_truncated": False,
                    "error": None,
                    "started_at": None,
                    "finished_at": None,
                    "reused_from": None,
                    "eligible_for_resume": False,
                    "override": None,
                },
            )
        )
    steps.sort(key=lambda p: p[0])
    return {
        "id": new_id,
        "project_id": parent["project_id"],
        "workflow_id": parent["workflow_id"],
        "workflow_version": version,
        "status": "queued",
        "trigger": "resume",
        "input": new_input,
        "error": None,
        "parent_run_id": parent["id"],
        "root_run_id": parent["root_run_id"] or parent["id"],
        "resumed_from_step": req.from_step,
        "created_by": user.id,
        "created_at": rows[0]["created_at"],
        "started_at": None,
        "finished_at": None,
        "resolved_by": None,
        "rerun": req.rerun,
        "steps": [s for _, s in steps],
        "resumed_runs": [],
        "eligible_steps": [],
        "rerunnable_steps": [],
    }


async def _without_secrets(db: Database, cipher: Cipher, run_id: uuid.UUID, req: ResumeRequest) -> ResumeRequest:
    """§9.2: a secret's value never reaches a stored step output, also not one typed in by hand. Read in the
    service scope (editors cannot read ciphertexts), before the caller's transaction; the permission check
    follows there, and nothing read here is returned."""
    async with db.service_scope() as tx:
        project_id = await AuditRepository(tx).project_of_run(run_id)
        secrets = await resolve_secrets(tx, cipher, project_id) if project_id is not None else {}
    if not secrets:
        return req
    return req.model_copy(update={"outputs": Redactor(secrets.values()).redact(req.outputs)})


async def resume(
    db: Database,
    user: User,
    run_id: uuid.UUID,
    raw_body: bytes,
    idem_key: str | None,
    facts: RequestFacts,
    *,
    cipher: Cipher | None = None,
) -> tuple[int, dict]:
    started = time.perf_counter()
    ctx: dict[str, Any] = {}
    req: ResumeRequest | None = None
    outcome, status = "accepted", 202
    try:
        if idem_key is not None and not (1 <= len(idem_key) <= 255):
            raise Unprocessable(
                "Idempotency-Key must be 1 to 255 characters.",
                errors=[{"loc": ["header", "idempotency-key"], "msg": "bad length"}],
            )
        req = parse_request(raw_body)
        stored_req = await _without_secrets(db, cipher, run_id, req) if req.outputs and cipher is not None else req
        try:
            async with db.user_scope(user.claims) as tx:
                body = await _resume_tx(tx, user, run_id, stored_req, idem_key, facts, ctx, request_hash=_hash(req))
        except asyncpg.UniqueViolationError:
            # The database's one-active-child index caught a race the row lock did not.
            async with db.service_scope() as tx:
                active = await RunRepository(tx).active_child(run_id)
            raise Conflict(
                "A resumed run of this run is already queued or running.", active_run_id=str(active) if active else None
            ) from None
        except _Replay as replay:
            status, body = replay.status, replay.body
            await _audit(
                db,
                user,
                run_id,
                req,
                ctx,
                facts,
                "accepted",
                status,
                new_run_id=body.get("id"),
                detail={"idempotent_replay": True},
            )
        return status, body
    except DomainError as exc:
        status = exc.status
        outcome = "denied" if status in (403, 404) else "rejected"
        if status < 500:
            detail = {"error": exc.detail}
            for extra in ("active_run_id", "resolved_by"):
                if extra in exc.extra:
                    detail[extra] = exc.extra[extra]
            await _audit(db, user, run_id, req, ctx, facts, outcome, status, detail=detail)
        raise
    finally:
        elapsed = time.perf_counter() - started
        RESUME_TOTAL.labels(outcome).inc()
        RESUME_SECONDS.labels(outcome).observe(elapsed)
        log.info(
            "resume attempt",
            extra={
                "action": ACTION,
                "outcome": outcome,
                "status": status,
                "run_id": str(run_id),
                "actor_id": str(user.id),
                "from_step": req.from_step if req else None,
                "new_run_id": str(ctx["new_run_id"]) if status == 202 and "new_run_id" in ctx else None,
                "ms": round(elapsed * 1000, 2),
            },
        )


async def _audit(
    db: Database,
    user: User,
    run_id: uuid.UUID,
    req: ResumeRequest | None,
    ctx: dict,
    facts: RequestFacts,
    outcome: str,
    status: int,
    *,
    new_run_id=None,
    detail=None,
) -> None:
    # A 404 is a non-member's attempt: it lands in the owner-only log of a project that is not the
    # caller's, so the free text the caller chose (reason, user agent) is not written, and the step
    # key only when it has the shape of one (DESIGN §9.5).
    outsider = status == 404
    step_key = req.from_step if req else None
    if outsider and step_key is not None and not STEP_KEY.fullmatch(step_key):
        step_key = None
    async with db.service_scope() as tx:
        repo = AuditRepository(tx)
        project_id = ctx.get("project_id") or await repo.project_of_run(run_id)
        await repo.insert(
            action=ACTION,
            outcome=outcome,
            actor_id=user.id,
            project_id=project_id,
            run_id=run_id,
            step_key=step_key,
            new_run_id=new_run_id,
            reason=req.reason if req and not outsider else None,
            status_code=status,
            request_id=facts.request_id,
            ip=facts.ip,
            user_agent=None if outsider else facts.user_agent,
            detail=detail or {},
        )
