"""Configuration and the `meshhook` command: a wrong setting stops the process with one clear
line (no traceback), and `meshhook token` mints a dev token the running service accepts."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid

import httpx
import jwt
import pytest

from tests import support


def base_env(tmp_path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHHOOK_", "SUPABASE_")) and k != "DATABASE_URL"}
    env["MESHHOOK_DATA_DIR"] = str(tmp_path / "data")  # never touch the user's own data dir
    env.update(extra)
    return env


async def meshhook(*args: str, env: dict, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.cli", *args, cwd=support.ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def assert_one_clear_line(rc: int, err: str, *mentions: str) -> str:
    assert rc != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for word in mentions:
        assert word in lines[0], lines[0]
    return lines[0]


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"

BAD_SETTINGS = [
    ({"MESHHOOK_LEASE_S": "abc"}, "MESHHOOK_LEASE_S"),
    ({"MESHHOOK_LEASE_S": "0"}, "MESHHOOK_LEASE_S"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"MESHHOOK_SECRET_KEY": "not-base64!"}, "MESHHOOK_SECRET_KEY"),
    ({"MESHHOOK_SECRET_KEY": "c2hvcnQ="}, "MESHHOOK_SECRET_KEY"),
    ({"MESHHOOK_LOG_FORMAT": "xml"}, "MESHHOOK_LOG_FORMAT"),
    ({"MESHHOOK_LOG_LEVEL": "loud"}, "MESHHOOK_LOG_LEVEL"),
    ({"MESHHOOK_WORKER_CONCURRENCY": "0"}, "MESHHOOK_WORKER_CONCURRENCY"),
    ({"MESHHOOK_POLL_INTERVAL_S": "-1"}, "MESHHOOK_POLL_INTERVAL_S"),
    ({"MESHHOOK_MAX_BODY_BYTES": "lots"}, "MESHHOOK_MAX_BODY_BYTES"),
    ({"MESHHOOK_JWKS_CACHE_S": "3600"}, "MESHHOOK_JWKS_CACHE_S"),  # the JWKS is cached at most 10 minutes
    ({"MESHHOOK_CORS_ORIGINS": "[not json"}, "MESHHOOK_CORS_ORIGINS"),
    ({"SUPABASE_URL": "ftp://example.test"}, "SUPABASE_URL"),
]


@pytest.mark.parametrize("extra,name", BAD_SETTINGS, ids=[n + "=" + list(e.values())[0] for e, n in BAD_SETTINGS])
def test_a_wrong_setting_is_one_line_naming_the_variable(monkeypatch, tmp_path, extra, name):
    from app.settings import SettingsError, load_settings

    for key in list(os.environ):
        if key.startswith(("MESHHOOK_", "SUPABASE_")) or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    for key, value in {"MESHHOOK_DATA_DIR": str(tmp_path), **extra}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value.code)
    assert "\n" not in message
    assert message.startswith("meshhook: invalid configuration:") and name in message


async def test_a_wrong_setting_stops_migrate_with_one_clear_line(tmp_path):
    lease = base_env(tmp_path, DATABASE_URL=UNREACHABLE, MESHHOOK_LEASE_S="abc")
    mysql = base_env(tmp_path, DATABASE_URL="mysql://x")
    results = await asyncio.gather(meshhook("migrate", env=lease), meshhook("migrate", env=mysql))
    for (rc, out, err), name in zip(results, ["MESHHOOK_LEASE_S", "DATABASE_URL"]):
        line = assert_one_clear_line(rc, err, name)
        assert line.startswith("meshhook:"), line
        assert "migrations applied" not in out


async def test_an_unreachable_database_fails_migrate_with_one_clear_line(tmp_path):
    rc, _, err = await meshhook("migrate", env=base_env(tmp_path, DATABASE_URL=UNREACHABLE))
    assert_one_clear_line(rc, err, "meshhook:")


async def test_token_needs_a_uuid_subject(tmp_path):
    env = base_env(tmp_path, SUPABASE_JWT_SECRET=support.HS_SECRET, DATABASE_URL=UNREACHABLE)
    rc, out, err = await meshhook("token", "--sub", "not-a-uuid", env=env)
    assert_one_clear_line(rc, err, "--sub")
    assert out == ""


async def test_token_refuses_without_a_secret_when_a_database_is_configured(tmp_path):
    env = base_env(tmp_path, DATABASE_URL=UNREACHABLE)
    rc, out, err = await meshhook("token", "--sub", str(uuid.uuid4()), env=env)
    assert_one_clear_line(rc, err, "SUPABASE_JWT_SECRET")
    assert out == ""
    # and it did not quietly create a local secret either
    assert not (tmp_path / "data" / "jwt_secret").exists()


async def test_token_refuses_a_ttl_that_is_not_positive(tmp_path):
    env = base_env(tmp_path, SUPABASE_JWT_SECRET=support.HS_SECRET, DATABASE_URL=UNREACHABLE)
    rc, out, err = await meshhook("token", "--sub", str(uuid.uuid4()), "--ttl", "0", env=env)
    assert rc != 0 and out == ""
    assert "Traceback" not in err and "--ttl" in err


async def test_a_minted_token_is_accepted_by_the_service(service, service_env, tmp_path):
    sub = str(uuid.uuid4())
    env = base_env(tmp_path, **{k: service_env[k] for k in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_JWT_SECRET")})
    rc, out, err = await meshhook("token", "--sub", sub, "--email", "dev@example.test", env=env)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1
    token = out.strip()
    claims = jwt.decode(token, support.HS_SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == sub and claims["role"] == "authenticated"
    assert claims["iss"] == service_env["SUPABASE_URL"] + "/auth/v1"
    assert claims["exp"] > claims["iat"]
    async with httpx.AsyncClient(base_url=service.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        created = await http.post("/projects", json={"name": "from the cli"})
        assert created.status_code == 201, created.text
        assert created.json()["created_by"] == sub
        listed = await http.get("/projects")
        assert [p["id"] for p in listed.json()["items"]] == [created.json()["id"]]
        # and the same token signed with another secret is refused
        forged = jwt.encode(claims, "a-different-secret-that-is-long-enough-0123456789", algorithm="HS256")
        assert (await http.get("/projects", headers={"Authorization": f"Bearer {forged}"})).status_code == 401


async def test_token_without_sub_speaks_for_the_same_dev_user_every_time(service, service_env, tmp_path):
    env = base_env(tmp_path, **{k: service_env[k] for k in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_JWT_SECRET")})
    first, second = await asyncio.gather(meshhook("token", env=env), meshhook("token", env=env))
    subs = []
    for rc, out, err in (first, second):
        assert rc == 0, err
        subs.append(jwt.decode(out.strip(), support.HS_SECRET, algorithms=["HS256"], audience="authenticated")["sub"])
    assert subs[0] == subs[1]
    assert (tmp_path / "data" / "dev_user_id").read_text().strip() == subs[0]
    # What one token created, a token minted later for the dev user still sees.
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        created = await http.post("/projects", json={"name": "mine"},
                                  headers={"Authorization": f"Bearer {first[1].strip()}"})
        assert created.status_code == 201, created.text
        later = await meshhook("token", env=env)
        listed = await http.get("/projects", headers={"Authorization": f"Bearer {later[1].strip()}"})
        assert [p["id"] for p in listed.json()["items"]] == [created.json()["id"]]


async def test_serve_on_a_taken_port_is_one_line_naming_the_port_option(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = await meshhook("serve", "--port", str(port),
                                      env=base_env(tmp_path, DATABASE_URL=UNREACHABLE))
    assert out == ""  # no banner, no token before the failure
    line = assert_one_clear_line(rc, err, "--port", str(port))
    assert "in use" in line
