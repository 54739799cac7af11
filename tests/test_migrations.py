"""Migrations are reversible (upgrade → downgrade to base → upgrade on a fresh database) and
Supabase-compatible (an existing `auth.uid()` is used as it is and survives a downgrade)."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.db.migrate import downgrade, upgrade
from tests import support

TABLES = {"projects", "project_members", "secrets", "workflows", "workflow_versions", "runs", "step_runs",
          "run_events", "audit_log", "idempotency_records", "bulk_resumes", "bulk_resume_items", "bulk_resume_events"}


@pytest.fixture
async def fresh_database(admin_url):
    name = f"meshhook_mig_{uuid.uuid4().hex[:10]}"
    url = await support.create_database(admin_url, name)
    try:
        yield url
    finally:
        await support.drop_database(admin_url, name)


async def schema_state(url: str) -> dict:
    conn = await asyncpg.connect(url)
    try:
        tables = {r["relname"] for r in await conn.fetch(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm') and c.relname <> 'alembic_version'")}
        functions = {r["proname"] for r in await conn.fetch(
            "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname in ('public', 'auth')")}
        rls = {r["relname"] for r in await conn.fetch(
            "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname = 'public' and c.relrowsecurity")}
        policies = await conn.fetchval("select count(*) from pg_policies where schemaname = 'public'")
        version = None
        if await conn.fetchval("select to_regclass('public.alembic_version') is not null"):
            version = await conn.fetchval("select version_num from alembic_version")
        roles = {r["rolname"] for r in await conn.fetch(
            "select rolname from pg_roles where rolname in ('anon', 'authenticated', 'service_role')")}
        return {"tables": tables, "functions": functions, "rls": rls, "policies": policies,
                "version": version, "roles": roles}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_database):
    await asyncio.to_thread(upgrade, fresh_database)
    first = await schema_state(fresh_database)
    assert TABLES <= first["tables"]
    assert TABLES <= first["rls"], "every tenant table has row-level security enabled"
    assert first["policies"] > 0
    assert {"uid", "jwt"} <= first["functions"]
    assert first["roles"] == {"anon", "authenticated", "service_role"}
    assert first["version"] is not None

    await asyncio.to_thread(downgrade, fresh_database, "base")
    down = await schema_state(fresh_database)
    assert down["tables"] == set(), f"tables left after downgrade: {down['tables']}"
    assert not {f for f in down["functions"] if f.startswith("meshhook")}, down["functions"]
    assert not {"uid", "jwt"} & down["functions"], "functions the migration created are dropped"
    assert down["policies"] == 0
    assert down["version"] is None

    await asyncio.to_thread(upgrade, fresh_database)
    again = await schema_state(fresh_database)
    assert again == first

    # the re-created schema works: RLS and the owner trigger behave as after the first upgrade
    conn = await asyncpg.connect(fresh_database)
    try:
        user, project = uuid.uuid4(), uuid.uuid4()
        async with conn.transaction():
            await conn.execute("select set_config('role', 'authenticated', true),"
                               " set_config('request.jwt.claims', $1, true)", f'{{"sub": "{user}"}}')
            await conn.execute("insert into projects (id, name, created_by) values ($1, 'p', $2)", project, user)
            assert await conn.fetchval("select role from project_members where project_id = $1", project) == "owner"
    finally:
        await conn.close()


async def test_an_existing_supabase_auth_uid_is_kept(fresh_database):
    # A Supabase database already has auth.uid(); the migration must use it and leave it in place.
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute("""
            create schema auth;
            create function auth.uid() returns uuid language sql stable as $$
              select (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid
            $$;
            comment on function auth.uid() is 'supabase';
        """)
    finally:
        await conn.close()
    await asyncio.to_thread(upgrade, fresh_database)
    await asyncio.to_thread(downgrade, fresh_database, "base")
    conn = await asyncpg.connect(fresh_database)
    try:
        comment = await conn.fetchval("select obj_description('auth.uid()'::regprocedure, 'pg_proc')")
        jwt_fn = await conn.fetchval("select to_regprocedure('auth.jwt()')")
    finally:
        await conn.close()
    assert comment == "supabase"
    assert jwt_fn is None  # the one the migration created is gone again
