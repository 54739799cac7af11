"""Bulk resume rules (DESIGN §10.3): matching frozen at creation, validation, the dry-run preview,
idempotent creation, progress, cancel. The worker's side is in app/bulk/runner.py; each run goes
through app.resume.service.resume, exactly as a single resume does."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import orjson

from app.audit.repository import AuditRepository
from app.audit.service import RequestFacts
from app.auth.jwt import User
from app.bulk.repository import BulkRepository, RunMatch
from app.bulk.schemas import MAX_MATCHED, BulkResumeCreate
from app.db.engine import Tx
from app.errors import Conflict, NotFound, Unprocessable
from app.projects.service import check_role, require_role
from app.resume.plan import RESUMABLE_RUN, RESUMABLE_STEP, build_resume_plan, eligible_steps
from app.workflows.definition import Dag
from app.workflows.repository import WorkflowRepository
from app.workflows.service import dag_cache

DEFAULT_STATUSES = ["failed", "paused", "cancelled"]
FINAL = frozenset({"succeeded", "failed", "cancelled"})
CANCELLED_WHY = "the bulk resume was cancelled before this run was resumed"
NO_ELIGIBLE_WHY = "no step of this run can be resumed from"


def idempotency_key_of(run_id: uuid.UUID, bulk_id: uuid.UUID) -> str:
    """The key each run's resume carries: a crash between the resume's commit and the item's update
    replays the first response instead of resuming the run again."""
    return f"bulk:{bulk_id}:{run_id}"


def skip_reason(desc: dict | None) -> str | None:
    """Why a run is skipped, from its descendants (None: go ahead). A run with a succeeded descendant
    is resolved; one with a queued or running descendant is being resumed; one that was already
    resumed is superseded by that newer attempt, which is the one to resume."""
    if desc is None:
        return None
    if desc["succeeded_id"] is not None:
        return f"resolved: run {desc['succeeded_id']} succeeded"
    if desc["active_id"] is not None:
        return f"already being resumed: run {desc['active_id']} is queued or running"
    return f"already resumed as run {desc['child_id']} ({desc['child_status']}); resume the newest attempt instead"


def request_hash(project_id: uuid.UUID, body: BulkResumeCreate) -> str:
    data = {"project_id": str(project_id), **body.model_dump(mode="json", exclude={"dry_run"})}
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def job_view(job, items: list[dict] | None) -> dict[str, Any]:
    settled = job["accepted"] + job["skipped"] + job["rejected"]
    return {
        "id": job["id"],
        "project_id": job["project_id"],
        "workflow_id": job["workflow_id"],
        "status": job["status"],
        "matched": job["matched"],
        "accepted": job["accepted"],
        "skipped": job["skipped"],
        "rejected": job["rejected"],
        "pending": job["matched"] - settled,
        "created_by": job["created_by"],
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "cancelled_at": job["cancelled_at"],
        "finished_at": job["finished_at"],
        "error": job["error"],
        "request": job["request"],
        "items": items or [],
    }


def _item(row) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "outcome": row["outcome"],
        "new_run_id": row["new_run_id"],
        "why": row["why"],
        "from_step": row["from_step"],
    }


async def _dags(tx: Tx, workflow_id: uuid.UUID, versions: set[int]) -> dict[int, Dag]:
    out = {}
    for v in sorted(versions):
        dag = await dag_cache.get(tx, workflow_id, v)
        if dag is not None:
            out[v] = dag
    return out


def _preview(
    run, statuses: dict[str, str], dag: Dag | None, target: Dag | None, target_version: int, from_step: str | None
) -> dict[str, Any]:
    """The outcome a resume of this run would have now, with the same rules as the single resume."""
    out: dict[str, Any] = {"run_id": run["id"], "new_run_id": None, "from_step": from_step, "plan": None}
    if dag is None:
        return out | {"outcome": "rejected", "why": "the run's workflow version cannot be loaded"}
    eligible = eligible_steps(dag, run["status"], statuses)
    if from_step is None:
        return out | {"outcome": "rejected", "why": NO_ELIGIBLE_WHY}
    if from_step not in dag.steps:
        return out | {"outcome": "rejected", "why": f"the run's workflow version has no step {from_step!r}"}
    if from_step not in eligible:
        if run["status"] not in RESUMABLE_RUN:
            why = f"the run is {run['status']}; only failed, paused or cancelled runs can be resumed"
        elif statuses.get(from_step) not in RESUMABLE_STEP:
            why = f"step {from_step!r} is {statuses.get(from_step)}; only a failed, paused or cancelled step can be resumed from"
        else:
            why = f"an ancestor of step {from_step!r} did not succeed"
        return out | {"outcome": "rejected", "why": why}
    if target is None:
        return out | {"outcome": "rejected", "why": f"workflow version {target_version} does not exist"}
    if from_step not in target.steps:
        return out | {"outcome": "rejected", "why": f"version {target_version} has no step {from_step!r}"}
    plan = build_resume_plan(dag, target, statuses, from_step, eligible)
    return out | {"outcome": "accepted", "why": None, "plan": {"reuse": len(plan.reuse), "rerun": len(plan.rerun)}}


async def create(
    tx: Tx, user: User, project_id: uuid.UUID, body: BulkResumeCreate, idem_key: str | None, facts: RequestFacts
) -> tuple[int, dict]:
    if idem_key is not None and not (1 <= len(idem_key) <= 255):
        raise Unprocessable(
            "Idempotency-Key must be 1 to 255 characters.",
            errors=[{"loc": ["header", "idempotency-key"], "msg": "bad length"}],
        )
    await require_role(tx, project_id, "editor")
    repo = BulkRepository(tx)
    req_hash = request_hash(project_id, body)
    if idem_key is not None and not body.dry_run:
        prior = await repo.by_idempotency_key(user.id, idem_key)
        if prior is not None:
            return 202, await _replay(tx, prior, req_hash)

    f = body.filter
    wf = await WorkflowRepository(tx).get(f.workflow_id)
    if wf is None or wf["project_id"] != project_id:
        raise Unprocessable(
            "The filter names no workflow of this project.",
            errors=[{"loc": ["body", "filter", "workflow_id"], "msg": "no such workflow in this project"}],
        )
    if f.created_after and f.created_before and f.created_after >= f.created_before:
        raise Unprocessable(
            "created_after must be before created_before.",
            errors=[{"loc": ["body", "filter", "created_before"], "msg": "not after created_after"}],
        )
    criteria = RunMatch(
        project_id,
        f.workflow_id,
        list(f.status or DEFAULT_STATUSES),
        f.failed_step,
        f.created_after,
        f.created_before,
        f.run_ids,
    )
    runs = await repo.match_runs(criteria, MAX_MATCHED + 1)
    if len(runs) > MAX_MATCHED:
        total = await repo.count_runs(criteria)
        raise Unprocessable(
            f"The filter matches {total} runs; a bulk resume takes at most {MAX_MATCHED}. "
            "Narrow it (status, failed_step, created_after/created_before or run_ids).",
            matched=total,
            errors=[{"loc": ["body", "filter"], "msg": f"matches {total} runs"}],
        )

    # The versions involved: every matched run's own, and the target one.
    if body.workflow_version == "original":
        target_version = None
    elif body.workflow_version == "latest":
        target_version = wf["latest_version"]
    else:
        target_version = int(body.workflow_version)
    versions = {r["workflow_version"] for r in runs} | ({target_version} if target_version else set())
    dags = await _dags(tx, f.workflow_id, versions or {wf["latest_version"]})
    if target_version is not None and target_version not in dags:
        raise Unprocessable(
            f"Workflow version {target_version} does not exist.",
            errors=[{"loc": ["body", "workflow_version"], "msg": "no such version"}],
        )
    if body.from_step is not None and not any(body.from_step in d.steps for d in dags.values()):
        raise Unprocessable(
            f"The workflow has no step {body.from_step!r}.",
            errors=[{"loc": ["body", "from_step"], "msg": "unknown step"}],
        )
    if not runs and f.failed_step is not None and not any(f.failed_step in d.steps for d in dags.values()):
        # A typo would otherwise match nothing, silently (when runs match, the step exists in their version).
        raise Unprocessable(
            f"The workflow has no step {f.failed_step!r}.",
            errors=[{"loc": ["body", "filter", "failed_step"], "msg": "unknown step"}],
        )

    run_ids = [r["id"] for r in runs]
    statuses = await repo.step_statuses(run_ids) if (body.from_step is None or body.dry_run) and run_ids else {}
    from_steps: list[str | None] = []
    for r in runs:
        if body.from_step is not None:
            from_steps.append(body.from_step)
        else:
            dag = dags.get(r["workflow_version"])
            eligible = eligible_steps(dag, r["status"], statuses.get(r["id"], {})) if dag else []
            from_steps.append(eligible[0] if eligible else None)

    request = body.model_dump(mode="json", exclude={"dry_run"})
    if body.dry_run:
        return 200, await _dry_run(
            tx, user, project_id, f.workflow_id, request, runs, statuses, dags, target_version, from_steps
        )

    bulk_id = uuid.uuid4()
    inserted = await repo.insert_job(
        bulk_id=bulk_id,
        project_id=project_id,
        workflow_id=f.workflow_id,
        request=request,
        request_hash=req_hash,
        idempotency_key=idem_key,
        max_per_second=body.max_per_second,
        created_by=user.id,
        request_id=facts.request_id,
        ip=facts.ip,
        run_ids=run_ids,
        from_steps=from_steps,
    )
    if not inserted:  # a concurrent request with the same key won the insert
        prior = await repo.by_idempotency_key(user.id, idem_key or "")
        return 202, await _replay(tx, prior, req_hash)
    await AuditRepository(tx).insert(
        action="bulk.resume",
        outcome="accepted",
        actor_id=user.id,
        project_id=project_id,
        run_id=None,
        step_key=body.from_step,
        new_run_id=None,
        reason=body.reason,
        status_code=202,
        request_id=facts.request_id,
        ip=facts.ip,
        user_agent=facts.user_agent,
        detail={
            "bulk_id": str(bulk_id),
            "matched": len(run_ids),
            "max_per_second": body.max_per_second,
            "workflow_id": str(f.workflow_id),
            "idempotency_key": idem_key is not None,
        },
    )
    job = await repo.get(bulk_id)
    return 202, job_view(job, [_item(r) for r in await repo.items(bulk_id)])


async def _replay(tx: Tx, prior, req_hash: str) -> dict:
    if prior["request_hash"] != req_hash:
        raise Unprocessable(
            "This Idempotency-Key was used with a different request body.",
            errors=[{"loc": ["header", "idempotency-key"], "msg": "reused with another body"}],
        )
    return job_view(prior, [_item(r) for r in await BulkRepository(tx).items(prior["id"])])


async def _dry_run(
    tx: Tx,
    user: User,
    project_id: uuid.UUID,
    workflow_id: uuid.UUID,
    request: dict,
    runs,
    statuses: dict,
    dags: dict[int, Dag],
    target_version: int | None,
    from_steps: list[str | None],
) -> dict:
    desc = await BulkRepository(tx).descendants([r["id"] for r in runs]) if runs else {}
    items = []
    for r, step in zip(runs, from_steps, strict=True):
        why = skip_reason(desc.get(r["id"]))
        if why is not None:
            items.append(
                {
                    "run_id": r["id"],
                    "outcome": "skipped",
                    "new_run_id": None,
                    "why": why,
                    "from_step": step,
                    "plan": None,
                }
            )
            continue
        version = target_version or r["workflow_version"]
        items.append(
            _preview(r, statuses.get(r["id"], {}), dags.get(r["workflow_version"]), dags.get(version), version, step)
        )
    counts = {o: sum(1 for i in items if i["outcome"] == o) for o in ("accepted", "skipped", "rejected")}
    return {
        "id": None,
        "project_id": project_id,
        "workflow_id": workflow_id,
        "status": "dry_run",
        "matched": len(items),
        **counts,
        "pending": 0,
        "created_by": user.id,
        "created_at": None,
        "started_at": None,
        "cancelled_at": None,
        "finished_at": None,
        "error": None,
        "request": request,
        "items": items,
    }


async def job_for(tx: Tx, bulk_id: uuid.UUID, min_role: str):
    job = await BulkRepository(tx).get_with_role(bulk_id)
    if job is None:
        raise NotFound("No such bulk resume.")
    check_role(job["caller_role"], min_role, "bulk resume")
    return job


async def get(tx: Tx, bulk_id: uuid.UUID, outcome: str | None = None) -> dict:
    job = await job_for(tx, bulk_id, "viewer")
    return job_view(job, [_item(r) for r in await BulkRepository(tx).items(bulk_id, outcome)])


async def cancel(tx: Tx, user: User, bulk_id: uuid.UUID, facts: RequestFacts) -> dict:
    job = await job_for(tx, bulk_id, "editor")
    repo = BulkRepository(tx)
    if not await repo.cancel(bulk_id, CANCELLED_WHY):
        status = (await repo.get(bulk_id))["status"]
        raise Conflict(f"The bulk resume is already {status}.")
    await AuditRepository(tx).insert(
        action="bulk.resume.cancel",
        outcome="accepted",
        actor_id=user.id,
        project_id=job["project_id"],
        run_id=None,
        step_key=None,
        new_run_id=None,
        reason=None,
        status_code=202,
        request_id=facts.request_id,
        ip=facts.ip,
        user_agent=facts.user_agent,
        detail={"bulk_id": str(bulk_id)},
    )
    return job_view(await repo.get(bulk_id), [_item(r) for r in await repo.items(bulk_id)])


async def list_events(tx: Tx, bulk_id: uuid.UUID, after: int, limit: int) -> dict:
    await job_for(tx, bulk_id, "viewer")
    items = [dict(r) for r in await BulkRepository(tx).events(bulk_id, after, limit)]
    return {"items": items, "next_cursor": str(items[-1]["id"]) if len(items) == limit else None}
