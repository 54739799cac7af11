"""Row-level security is the enforcement (DESIGN §2): raw SQL sent as role `authenticated`
with a user's claims — exactly what the service (or Supabase's PostgREST) does — sees only
the rows of the user's projects and can write only where the user's role allows.
Data is arranged through the API; every raw-SQL transaction here is rolled back."""
from __future__ import annotations

import contextlib
import json
import uuid

import asyncpg
import pytest

from tests import support
from tests.conftest import Client, linear

TENANT_TABLES = ["projects", "project_members", "workflows", "workflow_versions", "runs", "step_runs", "run_events"]
DENIED = (asyncpg.exceptions.InsufficientPrivilegeError,)


@contextlib.asynccontextmanager
async def as_user(db: asyncpg.Pool, user_id: str | None, role: str = "authenticated"):
    """A raw connection (from the superuser pool on database_url) in one transaction, switched
    to `role` with the user's JWT claims — both settings are local to the transaction."""
    async with db.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            claims = {"role": role, "aud": "authenticated"}
            if user_id is not None:
                claims["sub"] = user_id
            await conn.execute("select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
                               role, json.dumps(claims))
            yield conn
        finally:
            await tr.rollback()


@contextlib.asynccontextmanager
async def as_superuser(db: asyncpg.Pool):
    async with db.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            yield conn
        finally:
            await tr.rollback()


async def denied(conn: asyncpg.Connection, sql: str, *args) -> str:
    """Run `sql` in a savepoint and return the error message; fail if it succeeds."""
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
    except DENIED as exc:
        return str(exc)
    raise AssertionError(f"expected a refusal for: {sql}")


class Tenants:
    """Two projects with people in them, a finished run in each, a secret and an audit row."""
    owner: Client
    editor: Client
    viewer: Client
    outsider: Client
    project: str
    other_project: str
    workflow: dict
    other_workflow: dict
    run_id: str
    other_run_id: str


DEFINITION = linear(("start", "webhook", {}), ("echo", "transform", {"expression": "input"}))


@pytest.fixture(scope="module")
async def tenants(service, keys, db) -> Tenants:
    t = Tenants()
    t.owner, t.editor, t.viewer, t.outsider = (Client(service.url, keys) for _ in range(4))
    try:
        t.project = await t.owner.project("rls-main")
        await t.owner.add_member(t.project, t.editor, "editor")
        await t.owner.add_member(t.project, t.viewer, "viewer")
        t.workflow = await t.owner.workflow(t.project, DEFINITION)
        t.other_project = await t.outsider.project("rls-other")
        t.other_workflow = await t.outsider.workflow(t.other_project, DEFINITION)
        t.run_id = await t.editor.start(t.workflow["id"], {"n": 1})
        t.other_run_id = await t.outsider.start(t.other_workflow["id"], {"n": 2})
        await t.owner.wait(t.run_id)
        await t.outsider.wait(t.other_run_id)
        for c, p in ((t.editor, t.project), (t.outsider, t.other_project)):
            r = await c.put(f"/projects/{p}/secrets/API_TOKEN", {"value": "s3cr3t-value"})
            assert r.status_code == 204, r.text
        for p, actor in ((t.project, t.owner), (t.other_project, t.outsider)):
            await db.execute("insert into audit_log (action, outcome, actor_id, project_id, reason)"
                             " values ('test.rls', 'accepted', $1, $2, 'arranged by test_rls')",
                             uuid.UUID(actor.user_id), uuid.UUID(p))
        yield t
    finally:
        for c in (t.owner, t.editor, t.viewer, t.outsider):
            await c.aclose()


def project_column(table: str) -> str:
    return "id" if table == "projects" else "project_id"


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_each_user_sees_only_rows_of_their_projects(db, tenants, table):
    col = project_column(table)
    sql = f"select distinct {col}::text as p from {table}"
    async with as_superuser(db) as su:
        everything = {r["p"] for r in await su.fetch(sql)}
    # the arranged rows exist in both projects, so an empty result could not pass by accident
    assert {tenants.project, tenants.other_project} <= everything
    for who, expected in ((tenants.owner, {tenants.project}), (tenants.editor, {tenants.project}),
                          (tenants.viewer, {tenants.project}), (tenants.outsider, {tenants.other_project})):
        async with as_user(db, who.user_id) as conn:
            seen = {r["p"] for r in await conn.fetch(sql)}
        assert seen == expected, f"{table}: user sees {seen}, expected {expected}"


async def test_a_member_sees_the_runs_steps_and_events_of_the_project(db, tenants):
    async with as_user(db, tenants.viewer.user_id) as conn:
        run = await conn.fetchrow("select status from runs where id = $1", uuid.UUID(tenants.run_id))
        steps = await conn.fetch("select step_key from step_runs where run_id = $1 order by position",
                                 uuid.UUID(tenants.run_id))
        events = await conn.fetchval("select count(*) from run_events where run_id = $1", uuid.UUID(tenants.run_id))
        other = await conn.fetchrow("select 1 from runs where id = $1", uuid.UUID(tenants.other_run_id))
        other_steps = await conn.fetchval("select count(*) from step_runs where run_id = $1",
                                          uuid.UUID(tenants.other_run_id))
        other_events = await conn.fetchval("select count(*) from run_events where run_id = $1",
                                           uuid.UUID(tenants.other_run_id))
    assert run["status"] == "succeeded"
    assert [s["step_key"] for s in steps] == ["start", "echo"]
    assert events >= 2
    assert other is None and other_steps == 0 and other_events == 0


async def test_a_user_without_projects_sees_nothing(db, tenants):
    async with as_user(db, support.new_user()) as conn:
        for table in TENANT_TABLES + ["secrets", "audit_log"]:
            cols = "project_id" if table != "projects" else "id"
            assert await conn.fetch(f"select {cols} from {table}") == [], table


async def test_claims_without_a_subject_see_nothing(db, tenants):
    async with as_user(db, None) as conn:
        for table in TENANT_TABLES:
            assert await conn.fetch(f"select {project_column(table)} from {table}") == [], table


async def test_the_anon_role_reads_no_tenant_table(db, tenants):
    async with as_user(db, tenants.owner.user_id, role="anon") as conn:
        for table in TENANT_TABLES + ["secrets", "audit_log"]:
            await denied(conn, f"select 1 from {table}")


async def test_viewers_cannot_read_secrets_but_editors_see_their_names(db, tenants):
    project = uuid.UUID(tenants.project)
    async with as_user(db, tenants.viewer.user_id) as conn:
        assert await conn.fetch("select name from secrets where project_id = $1", project) == []
    async with as_user(db, tenants.editor.user_id) as conn:
        rows = await conn.fetch("select project_id::text, name from secrets")
        assert [tuple(r) for r in rows] == [(tenants.project, "API_TOKEN")]


@pytest.mark.parametrize("sql", [
    "select ciphertext from secrets",
    "select nonce from secrets",
    "select * from secrets",
    "select webhook_secret_ct from workflows",
    "select webhook_secret_nonce from workflows",
    "select * from workflows",
])
async def test_the_authenticated_role_cannot_select_secret_columns(db, tenants, sql):
    for who in (tenants.owner, tenants.editor):  # not even owners
        async with as_user(db, who.user_id) as conn:
            msg = await denied(conn, sql)
            assert "permission denied" in msg


async def test_only_owners_read_the_audit_log(db, tenants):
    sql = "select project_id::text as p, action from audit_log where action = 'test.rls'"
    async with as_user(db, tenants.owner.user_id) as conn:
        assert [(r["p"], r["action"]) for r in await conn.fetch(sql)] == [(tenants.project, "test.rls")]
    for who in (tenants.editor, tenants.viewer):
        async with as_user(db, who.user_id) as conn:
            assert await conn.fetch(sql) == []
            assert await conn.fetch("select id from audit_log") == []
    async with as_user(db, tenants.outsider.user_id) as conn:
        assert [r["p"] for r in await conn.fetch(sql)] == [tenants.other_project]


# ---------------------------------------------------------------- writing
def _workflow_insert(project: str) -> tuple[str, tuple]:
    return ("insert into workflows (id, project_id, slug, name, webhook_secret_nonce, webhook_secret_ct)"
            " values ($1, $2, $3, 'x', '\\x00', '\\x00')",
            (uuid.uuid4(), uuid.UUID(project), f"rls-{uuid.uuid4().hex[:8]}"))


async def test_editors_can_insert_into_their_project(db, tenants):
    # the positive control for the refusals below
    async with as_user(db, tenants.editor.user_id) as conn:
        sql, args = _workflow_insert(tenants.project)
        assert await conn.execute(sql, *args) == "INSERT 0 1"
        assert await conn.execute(
            "insert into secrets (project_id, name, nonce, ciphertext) values ($1, 'RLS_OK', '\\x00', '\\x00')",
            uuid.UUID(tenants.project)) == "INSERT 0 1"


@pytest.mark.parametrize("who", ["viewer", "outsider"])
async def test_non_editors_cannot_insert_into_a_project(db, tenants, who):
    user = getattr(tenants, who)
    project = uuid.UUID(tenants.project)
    run = uuid.UUID(tenants.run_id)
    wf = uuid.UUID(tenants.workflow["id"])
    async with as_user(db, user.user_id) as conn:
        sql, args = _workflow_insert(tenants.project)
        await denied(conn, sql, *args)
        await denied(conn, "insert into workflow_versions (workflow_id, project_id, version, definition)"
                           " values ($1, $2, 99, '{}')", wf, project)
        await denied(conn, "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger,"
                           " root_run_id, created_by) values ($1, $2, $3, 1, 'queued', 'api', $1, $4)",
                     uuid.uuid4(), project, wf, uuid.UUID(user.user_id))
        await denied(conn, "insert into step_runs (id, run_id, project_id, step_key, step_type, status)"
                           " values ($1, $2, $3, 'injected', 'transform', 'succeeded')", uuid.uuid4(), run, project)
        await denied(conn, "insert into run_events (run_id, project_id, type) values ($1, $2, 'run_failed')",
                     run, project)
        await denied(conn, "insert into secrets (project_id, name, nonce, ciphertext)"
                           " values ($1, 'NOPE', '\\x00', '\\x00')", project)
        await denied(conn, "insert into project_members (project_id, user_id, role) values ($1, $2, 'owner')",
                     project, uuid.UUID(user.user_id))
        await denied(conn, "insert into audit_log (action, outcome, actor_id, project_id)"
                           " values ('forged', 'accepted', $1, $2)", uuid.uuid4(), project)


async def test_editors_cannot_manage_members_or_promote_themselves(db, tenants):
    project = uuid.UUID(tenants.project)
    me = uuid.UUID(tenants.editor.user_id)
    async with as_user(db, tenants.editor.user_id) as conn:
        await denied(conn, "insert into project_members (project_id, user_id, role) values ($1, $2, 'viewer')",
                     project, uuid.uuid4())
        # RLS hides the row from the update: nothing changes
        assert await conn.execute("update project_members set role = 'owner' where project_id = $1"
                                  " and user_id = $2", project, me) == "UPDATE 0"
        assert await conn.fetchval("select role from project_members where project_id = $1 and user_id = $2",
                                   project, me) == "editor"


async def test_viewers_and_outsiders_cannot_change_runs_or_workflows(db, tenants):
    run, wf = uuid.UUID(tenants.run_id), uuid.UUID(tenants.workflow["id"])
    for who in (tenants.viewer, tenants.outsider):
        async with as_user(db, who.user_id) as conn:
            # RLS hides the rows from the update: nothing changes
            assert await conn.execute("update runs set status = 'cancelled' where id = $1", run) == "UPDATE 0"
            assert await conn.execute("update workflows set latest_version = 99 where id = $1", wf) == "UPDATE 0"
    async with as_user(db, tenants.editor.user_id) as conn:
        # editors may move a run's status, but not rewrite what it ran with or who started it
        await denied(conn, "update runs set input = '{}'::jsonb where id = $1", run)
        await denied(conn, "update runs set created_by = $2 where id = $1", run, uuid.uuid4())
        await denied(conn, "update runs set project_id = $2 where id = $1", run, uuid.UUID(tenants.other_project))
        await denied(conn, "update step_runs set output = '{}'::jsonb where run_id = $1", run)
    async with as_superuser(db) as su:
        assert await su.fetchval("select status from runs where id = $1", run) == "succeeded"


async def test_a_project_cannot_be_created_in_another_users_name(db, tenants):
    async with as_user(db, tenants.outsider.user_id) as conn:
        await denied(conn, "insert into projects (id, name, created_by) values ($1, 'x', $2)",
                     uuid.uuid4(), uuid.UUID(tenants.owner.user_id))


async def test_rows_cannot_point_into_another_project(db, tenants):
    """An editor of their own project must not attach rows to another tenant's workflow or run
    (e.g. run the other tenant's workflow definition, or inject steps into its run)."""
    mine = uuid.UUID(tenants.other_project)  # the outsider is owner here
    user = uuid.UUID(tenants.outsider.user_id)
    victim_wf = uuid.UUID(tenants.workflow["id"])
    victim_run = uuid.UUID(tenants.run_id)
    async with as_user(db, tenants.outsider.user_id) as conn:
        refused = (asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.ForeignKeyViolationError)

        async def refuses(sql, *args):
            try:
                async with conn.transaction():
                    await conn.execute(sql, *args)
            except refused:
                return
            raise AssertionError(f"cross-project row accepted: {sql}")

        new_run = uuid.uuid4()
        await refuses("insert into runs (id, project_id, workflow_id, workflow_version, status, trigger,"
                      " root_run_id, created_by) values ($1, $2, $3, 1, 'queued', 'api', $1, $4)",
                      new_run, mine, victim_wf, user)
        await refuses("insert into workflow_versions (workflow_id, project_id, version, definition)"
                      " values ($1, $2, 99, '{}')", victim_wf, mine)
        await refuses("insert into step_runs (id, run_id, project_id, step_key, step_type, status)"
                      " values ($1, $2, $3, 'injected', 'transform', 'succeeded')", uuid.uuid4(), victim_run, mine)
        await refuses("insert into run_events (run_id, project_id, type) values ($1, $2, 'run_failed')",
                      victim_run, mine)
        await refuses("insert into runs (id, project_id, workflow_id, workflow_version, status, trigger,"
                      " parent_run_id, root_run_id, created_by)"
                      " values ($1, $2, $3, 1, 'queued', 'resume', $4, $4, $5)",
                      uuid.uuid4(), mine, uuid.UUID(tenants.other_workflow["id"]), victim_run, user)


async def test_the_authenticated_role_cannot_delete_tenant_rows(db, tenants):
    async with as_user(db, tenants.owner.user_id) as conn:
        for table in TENANT_TABLES + ["secrets"]:
            await denied(conn, f"delete from {table} where {project_column(table)} = $1", uuid.UUID(tenants.project))


# ---------------------------------------------------------------- append-only and immutable
@pytest.mark.parametrize("sql", [
    "update audit_log set reason = 'rewritten' where project_id = $1",
    "delete from audit_log where project_id = $1",
])
async def test_audit_log_rejects_update_and_delete_even_for_the_superuser(db, tenants, sql):
    project = uuid.UUID(tenants.project)
    async with as_superuser(db) as su:
        msg = await denied(su, sql, project)
        assert "append-only" in msg
    async with as_user(db, tenants.owner.user_id) as conn:
        await denied(conn, sql, project)
    async with as_superuser(db) as su:
        assert await su.fetchval("select reason from audit_log where project_id = $1 and action = 'test.rls'",
                                 project) == "arranged by test_rls"


async def test_audit_log_cannot_be_truncated(db, tenants):
    async with as_superuser(db) as su:
        await denied(su, "truncate audit_log")


@pytest.mark.parametrize("sql", [
    "update workflow_versions set definition = '{}'::jsonb where workflow_id = $1",
    "delete from workflow_versions where workflow_id = $1",
])
async def test_workflow_versions_are_immutable(db, tenants, sql):
    wf = uuid.UUID(tenants.workflow["id"])
    async with as_superuser(db) as su:
        await denied(su, sql, wf)
    async with as_user(db, tenants.owner.user_id) as conn:
        await denied(conn, sql, wf)
    async with as_superuser(db) as su:
        definition = await su.fetchval("select definition from workflow_versions where workflow_id = $1", wf)
        assert definition == DEFINITION
