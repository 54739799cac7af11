"""Rules for runs: starting, reading (with resume eligibility), listing, lineage and operator actions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

from app.auth.jwt import User
from app.db.engine import Tx
from app.db.ids import new_id
from app.errors import Conflict, NotFound, Unprocessable
from app.projects.repository import ProjectRepository
from app.projects.service import check_role
from app.resume.plan import eligible_steps, rerunnable_steps, resolved_by
from app.runs.repository import RunRepository
from app.workflows.definition import Dag
from app.workflows.service import dag_cache, workflow_for

FINAL = frozenset({"succeeded", "failed", "cancelled"})


def pending_rows(dag: Dag, skip: set[str] | frozenset[str] = frozenset()) -> tuple[list, list, list]:
    keys, types, positions = [], [], []
    for i, k in enumerate(dag.order):
        if k not in skip:
            keys.append(k)
            types.append(dag.steps[k].type)
            positions.append(i)
    return keys, types, positions


async def start_run(tx: Tx, user: User, wf_id: uuid.UUID, input_: dict, version: int | None):
    wf = await workflow_for(tx, wf_id, "editor")
    version = version or wf["latest_version"]
    dag = await dag_cache.get(tx, wf_id, version)
    if dag is None:
        raise Unprocessable(
            f"Workflow version {version} does not exist.",
            errors=[{"loc": ["body", "version"], "msg": "no such version"}],
        )
    run_id = new_id()
    await RunRepository(tx).insert_run(
        run_id=run_id,
        project_id=wf["project_id"],
        workflow_id=wf_id,
        version=version,
        trigger="api",
        input=input_,
        created_by=user.id,
        pending=pending_rows(dag),
    )
    return await run_view(tx, run_id, with_steps=False)


async def run_for(tx: Tx, run_id: uuid.UUID, min_role: str, *, for_update: bool = False):
    """The run if the caller may act on it: 404 when invisible under RLS or not a member, 403 if the role is too low."""
    repo = RunRepository(tx)
    run = await repo.get_with_role(run_id)
    if run is None:
        raise NotFound("No such run.")
    check_role(run["caller_role"], min_role, "run")
    if for_update:
        # Row locks need the UPDATE policy (editor+), so lock only after the role check.
        run = await repo.get(run_id, for_update=True)
    return run


def run_dict(run) -> dict:
    return {
        k: run[k]
        for k in (
            "id",
            "project_id",
            "workflow_id",
            "workflow_version",
            "status",
            "trigger",
            "input",
            "error",
            "parent_run_id",
            "root_run_id",
            "resumed_from_step",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "rerun",
        )
    } | {"resolved_by": resolved_by(run)}


def step_dict(s, eligible: set[str]) -> dict:
    return {
        "key": s["step_key"],
        "type": s["step_type"],
        "status": s["status"],
        "attempt": s["attempt"],
        "input": s["input"],
        "output": s["output"],
        "output_truncated": s["output_truncated"],
        "error": s["error"],
        "started_at": s["started_at"],
        "finished_at": s["finished_at"],
        "reused_from": s["reused_from"],
        "eligible_for_resume": s["step_key"] in eligible,
        "override": s["override"],
    }


async def run_view(tx: Tx, run_id: uuid.UUID, *, with_steps: bool = True, run=None) -> dict:
    repo = RunRepository(tx)
    run = run or await repo.get(run_id)
    out = run_dict(run)
    if with_steps:
        steps = await repo.steps(run_id)
        dag = await dag_cache.get(tx, run["workflow_id"], run["workflow_version"])
        statuses = {s["step_key"]: s["status"] for s in steps}
        eligible = eligible_steps(dag, run["status"], statuses) if dag else []
        eset = set(eligible)
        out["steps"] = [step_dict(s, eset) for s in steps]
        out["eligible_steps"] = eligible
        out["rerunnable_steps"] = (
            rerunnable_steps(dag, run["status"], out["resolved_by"] is not None, statuses) if dag else []
        )
    else:
        out["steps"] = []
        out["eligible_steps"] = []
        out["rerunnable_steps"] = []
    out["resumed_runs"] = await repo.children(run_id)
    return out


async def get_run(tx: Tx, run_id: uuid.UUID) -> dict:
    run = await run_for(tx, run_id, "viewer")
    return await run_view(tx, run_id, run=run)


async def get_step(tx: Tx, run_id: uuid.UUID, key: str) -> dict:
    run = await run_for(tx, run_id, "viewer")
    repo = RunRepository(tx)
    step = await repo.step(run_id, key)
    if step is None:
        raise NotFound("No such step in this run.")
    dag = await dag_cache.get(tx, run["workflow_id"], run["workflow_version"])
    statuses = {s["step_key"]: s["status"] for s in await repo.step_statuses(run_id)}
    eligible = set(eligible_steps(dag, run["status"], statuses)) if dag else set()
    return step_dict(step, eligible) | {"attempts": step["attempts"]}


@dataclass(frozen=True)
class CursorSeal:
    """Signs list cursors with a server key (HMAC-SHA256) over the position and the query they came from,
    so a cursor cannot be forged or carried over to another query."""

    key: bytes
    query: str  # the request's filters, canonical (everything but cursor and limit)

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self.key, self.query.encode() + b"\n" + payload, hashlib.sha256).digest()[:16]

    def seal(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(self._tag(payload) + payload).decode().rstrip("=")

    def open(self, cursor: str) -> bytes | None:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            return None
        tag, payload = raw[:16], raw[16:]
        return payload if len(tag) == 16 and hmac.compare_digest(tag, self._tag(payload)) else None


def encode_cursor(created_at: datetime, run_id: uuid.UUID, seal: CursorSeal) -> str:
    return seal.seal(orjson.dumps([created_at.isoformat(), str(run_id)]))


def decode_cursor(cursor: str, seal: CursorSeal) -> tuple[datetime, uuid.UUID]:
    try:
        payload = seal.open(cursor)
        if payload is None:
            raise ValueError("bad signature")
        ts, rid = orjson.loads(payload)
        return datetime.fromisoformat(ts), uuid.UUID(rid)
    except Exception:  # noqa: BLE001 - any garbage is the client's mistake
        raise Unprocessable(
            "The cursor is not valid for this query: pass `next_cursor` with the same filters.",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        ) from None


async def list_runs(
    tx: Tx,
    *,
    project_id,
    workflow_id,
    status,
    created_after,
    created_before,
    cursor,
    limit,
    seal: CursorSeal,
    unresolved: bool = False,
):
    if project_id is not None:
        role = await ProjectRepository(tx).role_of_caller(project_id)
        check_role(role, "viewer", "project")
    if workflow_id is not None:
        await workflow_for(tx, workflow_id, "viewer")
    cur = decode_cursor(cursor, seal) if cursor else None
    rows = await RunRepository(tx).list_runs(
        project_id=project_id,
        workflow_id=workflow_id,
        status=status,
        created_after=created_after,
        created_before=created_before,
        cursor=cur,
        limit=limit,
        unresolved=unresolved,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"], seal) if more and rows else None
    return {"items": [run_dict(r) for r in rows], "next_cursor": nxt}


async def lineage(tx: Tx, run_id: uuid.UUID) -> dict:
    run = await run_for(tx, run_id, "viewer")
    root = run["root_run_id"] or run["id"]
    rows = await RunRepository(tx).lineage(root)
    children: dict[uuid.UUID, list[uuid.UUID]] = {}
    for r in rows:
        if r["parent_run_id"] is not None:
            children.setdefault(r["parent_run_id"], []).append(r["id"])
    return {
        "root_run_id": root,
        "runs": [dict(r) | {"children": children.get(r["id"], []), "resolved_by": resolved_by(r)} for r in rows],
    }


async def list_events(tx: Tx, run_id: uuid.UUID, after: int, limit: int) -> dict:
    await run_for(tx, run_id, "viewer")
    rows = await RunRepository(tx).events(run_id, after, limit)
    items = [dict(r) for r in rows]
    return {"items": items, "next_cursor": str(items[-1]["id"]) if len(items) == limit else None}


async def request_stop(tx: Tx, run_id: uuid.UUID, action: str) -> dict:
    """cancel / pause: no new step starts; a cancel aborts in-flight requests, a pause lets them finish;
    the worker that drives the run is notified and makes the final move.
    A paused run has nothing in flight, so cancelling it happens here and now."""
    run = await run_for(tx, run_id, "editor", for_update=True)
    repo = RunRepository(tx)
    if run["status"] in FINAL:
        raise Conflict(f"The run is already {run['status']}.")
    if run["status"] == "paused":
        if action == "pause":
            raise Conflict("The run is already paused.")
        await repo.cancel_open_steps(run_id, run["project_id"])
        await repo.set_status(run_id, "cancelled", final=True)
        await repo.add_event(run_id, run["project_id"], "run_cancelled", payload={"by": "operator"})
    elif action == "pause" and run["control"] == "cancel":
        raise Conflict("A cancel is already pending for this run.")
    else:
        await repo.set_control(run_id, action)
        await repo.add_event(run_id, run["project_id"], f"run_{action}_requested", payload={})
    return await run_view(tx, run_id, with_steps=False)
