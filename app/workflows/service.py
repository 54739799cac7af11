"""Rules for workflows: validation on write, immutable numbered versions, webhook secrets."""

from __future__ import annotations

import base64
import logging
import secrets as pysecrets
import uuid
from collections import OrderedDict

from app.auth.jwt import User
from app.db.engine import Tx
from app.db.ids import new_id
from app.errors import Conflict, NotFound, Unprocessable
from app.projects.service import check_role, require_role
from app.projects.repository import ProjectRepository
from app.secrets.crypto import Cipher
from app.workflows.definition import Dag, DefinitionInvalid, parse_definition, step_key_errors
from app.workflows.repository import WorkflowRepository

import asyncpg


log = logging.getLogger("meshhook.workflows")


def webhook_context(wf_id: uuid.UUID) -> str:
    return f"webhook:{wf_id}"


def validate_definition(definition: dict) -> Dag:
    """A definition about to be written: the parse rules plus the step-key rule (DESIGN §9.5)."""
    errors = step_key_errors(definition)
    try:
        dag = parse_definition(definition)
    except DefinitionInvalid as exc:
        errors = [*errors, *exc.errors]
    if errors:
        raise Unprocessable(f"The workflow definition has {len(errors)} problem(s).", errors=errors)
    return dag


class DagCache:
    """Parsed definitions by (workflow id, version): versions are immutable, so entries never go stale."""

    def __init__(self, size: int = 512, *, lenient: bool = False):
        self._items: OrderedDict[tuple[uuid.UUID, int], Dag] = OrderedDict()
        self.size = size
        # The API reads stored definitions leniently: one written behind its back that no longer
        # parses shows as "no definition" (no eligibility, no new runs) instead of a 500. The
        # engine is strict, so such a run fails with an engine_error.
        self.lenient = lenient

    def cached(self, wf_id: uuid.UUID, version: int) -> Dag | None:
        return self._items.get((wf_id, version))

    async def get(self, tx: Tx, wf_id: uuid.UUID, version: int) -> Dag | None:
        key = (wf_id, version)
        dag = self._items.get(key)
        if dag is None:
            definition = await WorkflowRepository(tx).definition(wf_id, version)
            if definition is None:
                return None
            try:
                dag = parse_definition(definition)
            except DefinitionInvalid:
                if not self.lenient:
                    raise
                log.warning("stored definition does not parse", extra={"workflow_id": str(wf_id), "version": version})
                return None
            self._items[key] = dag
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return dag


dag_cache = DagCache(lenient=True)


def new_webhook_secret() -> str:
    """A signing secret as Standard Webhooks libraries expect it (§9.4): whsec_ + base64 of 32 bytes."""
    return "whsec_" + base64.b64encode(pysecrets.token_bytes(32)).decode()


async def create_workflow(
    tx: Tx, cipher: Cipher, user: User, project_id: uuid.UUID, slug: str, name: str, definition: dict
):
    await require_role(tx, project_id, "editor")
    validate_definition(definition)
    repo = WorkflowRepository(tx)
    wf_id = new_id()
    secret = new_webhook_secret()
    nonce, ct = cipher.encrypt(secret, webhook_context(wf_id))
    try:
        await repo.create(wf_id, project_id, slug, name, nonce, ct, user.id)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"A workflow with slug {slug!r} already exists in this project.") from None
    version = await repo.next_version(wf_id)
    await repo.insert_version(wf_id, project_id, version, definition, user.id)
    row = await repo.get_with_version(wf_id, None)
    return _read(row) | {"webhook_secret": secret}


async def workflow_for(tx: Tx, wf_id: uuid.UUID, min_role: str):
    row = await WorkflowRepository(tx).get(wf_id)
    if row is None:
        raise NotFound("No such workflow.")
    role = await ProjectRepository(tx).role_of_caller(row["project_id"])
    check_role(role, min_role, "workflow")
    return row


async def add_version(tx: Tx, user: User, wf_id: uuid.UUID, definition: dict):
    wf = await workflow_for(tx, wf_id, "editor")
    validate_definition(definition)
    repo = WorkflowRepository(tx)
    version = await repo.next_version(wf_id)
    return await repo.insert_version(wf_id, wf["project_id"], version, definition, user.id)


async def get_workflow(tx: Tx, wf_id: uuid.UUID, version: int | None = None):
    """The workflow with one version's definition: the latest, or the given one (404 when it does not exist)."""
    await workflow_for(tx, wf_id, "viewer")
    row = await WorkflowRepository(tx).get_with_version(wf_id, version)
    if row is None:
        raise NotFound(f"Workflow version {version} does not exist.")
    return _read(row)


def _read(row) -> dict:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "slug": row["slug"],
        "name": row["name"],
        "version": row["version"],
        "latest_version": row["latest_version"],
        "definition": row["definition"],
        "created_at": row["created_at"],
        "webhook_url": f"/hooks/{row['id']}",
    }
