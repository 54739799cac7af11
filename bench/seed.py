"""Arranges what the benchmark needs straight in SQL (superuser, no RLS): a project with
editors, linear workflows of N steps, failed parent runs with their stored steps, and
queued runs for the worker to drain. Far faster than going through the API, and the
resume path only needs rows that look like a run the engine left behind."""
from __future__ import annotations

import uuid

import asyncpg
import orjson

INPUT = {"order": 1234, "amount": 42.5, "currency": "EUR", "customer": "c_0123456789"}


def linear_definition(n: int) -> dict:
    """s1 (webhook) → s2 → … → sN, every later step a transform passing the previous output on."""
    nodes = [{"id": "s1", "data": {"type": "webhook", "config": {}}}]
    nodes += [{"id": f"s{i}", "data": {"type": "transform", "config": {"expression": f"steps.s{i - 1}"}}}
              for i in range(2, n + 1)]
    edges = [{"source": f"s{i}", "target": f"s{i + 1}"} for i in range(1, n)]
    return {"nodes": nodes, "edges": edges}


async def init_json(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads, format="text")


class Seeder:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn
        self.owner = uuid.uuid4()
        self.project = uuid.uuid4()
        self.editors: list[uuid.UUID] = []
        self.workflows: dict[int, uuid.UUID] = {}

    async def project_with_editors(self, n_editors: int) -> None:
        await self.conn.execute("insert into projects (id, name, created_by) values ($1, 'bench', $2)",
                                self.project, self.owner)  # a trigger makes the creator the owner
        self.editors = [uuid.uuid4() for _ in range(n_editors)]
        await self.conn.executemany(
            "insert into project_members (project_id, user_id, role) values ($1, $2, 'editor')",
            [(self.project, u) for u in self.editors])

    async def workflow(self, n_steps: int) -> uuid.UUID:
        wf = uuid.uuid4()
        await self.conn.execute(
            "insert into workflows (id, project_id, slug, name, webhook_secret_nonce, webhook_secret_ct,"
            " latest_version, created_by) values ($1, $2, $3, $3, '\\x00'::bytea, '\\x00'::bytea, 1, $4)",
            wf, self.project, f"linear-{n_steps}", self.owner)
        await self.conn.execute(
            "insert into workflow_versions (workflow_id, project_id, version, definition, created_by)"
            " values ($1, $2, 1, $3, $4)", wf, self.project, linear_definition(n_steps), self.owner)
        self.workflows[n_steps] = wf
        return wf

    async def failed_parents(self, n_steps: int, count: int, fail_at: int) -> list[uuid.UUID]:
        """`count` failed runs: s1..s{fail_at-1} succeeded with outputs, s{fail_at} failed, the rest pending."""
        wf = self.workflows[n_steps]
        ids = [uuid.uuid4() for _ in range(count)]
        async with self.conn.transaction():
            await self.conn.execute(
                "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, error,"
                " root_run_id, created_by, started_at, finished_at)"
                " select r.id, $2, $3, 1, 'failed', 'api', $4, $5, r.id, $6, clock_timestamp(), clock_timestamp()"
                " from unnest($1::uuid[]) as r(id)",
                ids, self.project, wf, INPUT,
                {"step": f"s{fail_at}", "type": "step_failed", "message": f"step 's{fail_at}' failed"},
                self.owner)
            await self.conn.execute(
                "insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt,"
                " input, output, error, attempts, started_at, finished_at)"
                " select gen_random_uuid(), r.id, $2, 's' || i, case when i = 1 then 'webhook' else 'transform' end,"
                "   i - 1,"
                "   case when i < $4 then 'succeeded' when i = $4 then 'failed' else 'pending' end,"
                "   case when i <= $4 then 1 else 0 end,"
                "   null,"
                "   case when i < $4 then $5::jsonb end,"
                "   case when i = $4 then '{\"type\": \"expression_error\", \"message\": \"boom\"}'::jsonb end,"
                "   case when i <= $4 then jsonb_build_array(jsonb_build_object('attempt', 1)) else '[]'::jsonb end,"
                "   case when i <= $4 then clock_timestamp() end,"
                "   case when i <= $4 then clock_timestamp() end"
                " from unnest($1::uuid[]) as r(id) cross join generate_series(1, $3) as i",
                ids, self.project, n_steps, fail_at, INPUT)
        return ids

    async def queued_runs(self, n_steps: int, count: int) -> tuple[list[uuid.UUID], float]:
        """`count` queued runs with pending steps, committed with one wake-up. Returns the ids
        and the database clock (epoch seconds) just before the commit."""
        wf = self.workflows[n_steps]
        ids = [uuid.uuid4() for _ in range(count)]
        async with self.conn.transaction():
            await self.conn.execute(
                "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input,"
                " root_run_id, created_by)"
                " select r.id, $2, $3, 1, 'queued', 'api', $4, r.id, $5 from unnest($1::uuid[]) as r(id)",
                ids, self.project, wf, INPUT, self.owner)
            await self.conn.execute(
                "insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)"
                " select gen_random_uuid(), r.id, $2, 's' || i, case when i = 1 then 'webhook' else 'transform' end,"
                "   i - 1, 'pending'"
                " from unnest($1::uuid[]) as r(id) cross join generate_series(1, $3) as i",
                ids, self.project, n_steps)
            await self.conn.execute(
                "insert into run_events (run_id, project_id, type) select r.id, $2, 'run_queued'"
                " from unnest($1::uuid[]) as r(id)", ids, self.project)
            await self.conn.execute("select pg_notify('meshhook_runs', $1)", str(ids[0]))
            t0 = await self.conn.fetchval("select extract(epoch from clock_timestamp())::float8")
        return ids, t0

    async def custom_workflow(self, slug: str, definition: dict) -> uuid.UUID:
        wf = uuid.uuid4()
        await self.conn.execute(
            "insert into workflows (id, project_id, slug, name, webhook_secret_nonce, webhook_secret_ct,"
            " latest_version, created_by) values ($1, $2, $3, $3, '\\x00'::bytea, '\\x00'::bytea, 1, $4)",
            wf, self.project, slug, self.owner)
        await self.conn.execute(
            "insert into workflow_versions (workflow_id, project_id, version, definition, created_by)"
            " values ($1, $2, 1, $3, $4)", wf, self.project, definition, self.owner)
        return wf

    async def queued_runs_of(self, wf: uuid.UUID, steps: list[tuple[str, str]], count: int) -> list[uuid.UUID]:
        """`count` queued runs of a custom workflow (`steps`: key and type of each node), one wake-up."""
        ids = [uuid.uuid4() for _ in range(count)]
        keys, types = [k for k, _ in steps], [t for _, t in steps]
        async with self.conn.transaction():
            await self.conn.execute(
                "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input,"
                " root_run_id, created_by)"
                " select r.id, $2, $3, 1, 'queued', 'api', $4, r.id, $5 from unnest($1::uuid[]) as r(id)",
                ids, self.project, wf, INPUT, self.owner)
            await self.conn.execute(
                "insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)"
                " select gen_random_uuid(), r.id, $2, s.k, s.t, s.o - 1, 'pending'"
                " from unnest($1::uuid[]) as r(id)"
                " cross join unnest($3::text[], $4::text[]) with ordinality as s(k, t, o)",
                ids, self.project, keys, types)
            await self.conn.execute(
                "insert into run_events (run_id, project_id, type) select r.id, $2, 'run_queued'"
                " from unnest($1::uuid[]) as r(id)", ids, self.project)
            await self.conn.execute("select pg_notify('meshhook_runs', $1)", str(ids[0]))
        return ids

async def grow_queue(conn: asyncpg.Connection, owner: uuid.UUID, *, projects: int, queued: int) -> list[uuid.UUID]:
    """Other tenants: `projects` projects with 5 members and a 10-step workflow each, and `queued`
    queued runs (with their pending steps) spread over them, none of which any worker will run
    while the benchmark measures. Bulk SQL with triggers off (session_replication_role = replica),
    so the owner rows the projects trigger would add are written here. Returns the project ids."""
    ids = [uuid.uuid4() for _ in range(projects)]
    definition = linear_definition(10)
    async with conn.transaction():
        await conn.execute("set local session_replication_role = replica")
        await conn.execute(
            "insert into projects (id, name, created_by) select p, 'other', $2 from unnest($1::uuid[]) as p",
            ids, owner)
        await conn.execute(
            "insert into project_members (project_id, user_id, role)"
            " select p, case when i = 1 then $2 else gen_random_uuid() end,"
            "   case when i = 1 then 'owner' else 'editor' end"
            " from unnest($1::uuid[]) as p cross join generate_series(1, 5) as i", ids, owner)
        await conn.execute(
            "insert into workflows (id, project_id, slug, name, webhook_secret_nonce, webhook_secret_ct,"
            " latest_version, created_by)"
            " select p, p, 'linear-10', 'linear-10', '\\x00'::bytea, '\\x00'::bytea, 1, $2 from unnest($1::uuid[]) as p",
            ids, owner)  # each project's one workflow shares its id (ids are unique per table)
        await conn.execute(
            "insert into workflow_versions (workflow_id, project_id, version, definition, created_by)"
            " select p, p, 1, $2, $3 from unnest($1::uuid[]) as p", ids, definition, owner)
        await conn.execute(
            "with r as ("
            "  insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, root_run_id,"
            "                    created_by, created_at)"
            "  select x.id, x.p, x.p, 1, 'queued', 'api', $3, x.id, $4, clock_timestamp() - interval '1 minute'"
            "  from (select gen_random_uuid() as id, ($1::uuid[])[1 + (i % cardinality($1::uuid[]))] as p"
            "        from generate_series(1, $2) as i) x"
            "  returning id, project_id)"
            " insert into step_runs (id, run_id, project_id, step_key, step_type, position, status)"
            " select gen_random_uuid(), r.id, r.project_id, 's' || i,"
            "   case when i = 1 then 'webhook' else 'transform' end, i - 1, 'pending'"
            " from r cross join generate_series(1, 10) as i", ids, queued, INPUT, owner)
    return ids


async def grow_history(conn: asyncpg.Connection, owner: uuid.UUID, projects: list[uuid.UUID], *, finished: int,
                       member: uuid.UUID, member_of: int) -> None:
    """`finished` succeeded 10-step runs (with their steps and a run_succeeded event) spread over
    `projects`, created over the past 30 days; `member` becomes a viewer of `member_of` of them."""
    async with conn.transaction():
        await conn.execute("set local session_replication_role = replica")
        await conn.execute(
            "insert into project_members (project_id, user_id, role) select p, $2, 'viewer'"
            " from unnest($1::uuid[]) as p", projects[:member_of], member)
        await conn.execute(
            "insert into runs (id, project_id, workflow_id, workflow_version, status, trigger, input, root_run_id,"
            " created_by, created_at, started_at, finished_at, updated_at)"
            " select x.id, x.p, x.p, 1, 'succeeded', 'api', $3, x.id, $4, x.at, x.at, x.at, x.at"
            " from (select gen_random_uuid() as id, ($1::uuid[])[1 + (i % cardinality($1::uuid[]))] as p,"
            "              clock_timestamp() - interval '1 hour' - random() * interval '30 days' as at"
            "       from generate_series(1, $2) as i) x", projects, finished, INPUT, owner)
        await conn.execute(
            "insert into step_runs (id, run_id, project_id, step_key, step_type, position, status, attempt, output,"
            " attempts, started_at, finished_at)"
            " select gen_random_uuid(), r.id, r.project_id, 's' || i,"
            "   case when i = 1 then 'webhook' else 'transform' end, i - 1, 'succeeded', 1, $2::jsonb,"
            "   '[{\"attempt\": 1}]'::jsonb, r.finished_at, r.finished_at"
            " from runs r cross join generate_series(1, 10) as i"
            " where r.project_id = any($1::uuid[]) and r.status = 'succeeded'", projects, INPUT)
        await conn.execute(
            "insert into run_events (run_id, project_id, type, at)"
            " select id, project_id, 'run_succeeded', finished_at from runs"
            " where project_id = any($1::uuid[]) and status = 'succeeded'", projects)
