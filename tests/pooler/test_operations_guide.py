"""docs/operations.md's deploy block, run as a newcomer would: the environment it exports and
`meshhook migrate`, with the guide's two Supabase strings pointing at the test PgBouncer
(transaction mode) and at the database itself (standing in for the session pooler)."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import asyncpg

from tests import support
from tests.support import ROOT


def deploy_block() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    m = re.search(r"<!-- pooler-deploy[^>]*-->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert m, "docs/operations.md lost its pooler-deploy block"
    return m.group(1)


async def test_the_guides_deploy_block_migrates_a_database_through_pgbouncer(admin_url, pgbouncer):
    block = deploy_block()
    assert "MESHHOOK_DB_POOLER=transaction" in block and "MESHHOOK_LISTEN_URL" in block
    name = f"meshhook_guide_{uuid.uuid4().hex[:8]}"
    direct = await support.create_database(admin_url, name)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHHOOK_", "SUPABASE_", "DATABASE_URL"))}
        env.update(TXN_POOLER=pgbouncer.url(direct), SESSION_POOLER=direct,
                   PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}")
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail", "-c", block + '\nprintf "%s\\n" "$MESHHOOK_LISTEN_URL"'],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:]
        assert "migrations applied" in done.stdout
        assert done.stdout.strip().splitlines()[-1] == direct
        conn = await asyncpg.connect(direct)
        try:
            assert await conn.fetchval("select count(*) from alembic_version") == 1
            assert await conn.fetchval("select to_regclass('public.runs') is not null")
        finally:
            await conn.close()
    finally:
        await support.drop_database(admin_url, name)
