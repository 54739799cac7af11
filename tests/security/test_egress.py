"""SSRF (DESIGN §9.1): a tenant's http_call reaches public addresses only. The session service
opens exactly the World upstream's port (tests/conftest.py), so everything else on this machine —
the API itself, PostgreSQL, a closed port, cloud metadata, private ranges — is refused at once
with `egress_denied`, with the same words whether or not something listens there, and however
the address is spelt. A second service shows what MESHHOOK_EGRESS_ALLOW entries open."""
from __future__ import annotations

import asyncio
import json
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from app.egress.transport import denial_message
from tests import support
from tests.conftest import Client, linear, sign_hook, steps_by_key
from tests.test_settings_cli import assert_one_clear_line, base_env, meshhook

ONE_CALL = linear(("start", "webhook", {}),
                  ("call", "http_call", {"url": "{{ input.target }}", "timeout_s": 30,
                                         "retry": {"max_attempts": 3, "backoff_s": 1}}))


async def _call(owner: Client, wf_id: str, target: str) -> dict:
    run = await owner.wait(await owner.start(wf_id, {"target": target}))
    return steps_by_key(run)["call"] | {"run": run}


def _ports(service, database_url) -> dict[str, int]:
    return {"api": urlsplit(service.url).port, "postgres": urlsplit(database_url).port or 5432,
            "closed": support.free_port()}


HOSTS = ["127.0.0.1", "localhost", "2130706433", "127.1", "0x7f.1", "0x7f000001", "[::ffff:127.0.0.1]",
         "[::ffff:7f00:1]", "[::1]", "[64:ff9b::7f00:1]"]


async def test_every_spelling_of_this_machine_is_denied_with_one_message(owner, service, database_url, world):
    project = await owner.project()
    wf = await owner.workflow(project, ONE_CALL)
    ports = _ports(service, database_url)
    targets = [(host, port) for host in HOSTS for port in ports.values()]
    steps = await asyncio.gather(*(_call(owner, wf["id"], f"http://{h}:{p}/metrics") for h, p in targets))
    for (host, port), step in zip(targets, steps):
        shown_host = host.strip("[]")
        assert step["status"] == "failed", (host, port, step)
        assert step["error"] == {"type": "egress_denied", "message": denial_message(shown_host, port)}, (host, port)
        assert step["attempt"] == 1 and step["output"] is None  # never retried, nothing read
    # Open or closed, API or database: one message (bar the target it names), so no port map.
    shapes = {s["error"]["message"].split(" is not allowed")[1] for s in steps}
    assert len(shapes) == 1
    events = (await owner.get(f"/runs/{steps[0]['run']['id']}/events")).json()["items"]
    assert [e["type"] for e in events if e["type"].startswith("step_")].count("step_retrying") == 0


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://[fe80::1]/", "http://10.0.0.1/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[fd00::1]/",
    "http://224.0.0.1/", "http://255.255.255.255/", "http://198.18.0.1/", "http://[::ffff:169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/", "http://[64:ff9b::a9fe:a9fe]/",
])
async def test_metadata_and_private_ranges_are_denied_without_waiting(owner, target):
    project = await owner.project()
    wf = await owner.workflow(project, ONE_CALL)
    step = await _call(owner, wf["id"], target)
    # 30 s timeout and 3 attempts configured: the run failing at all within the wait means no connect
    # was tried; the type and the single attempt say the same.
    assert step["error"]["type"] == "egress_denied" and step["attempt"] == 1


async def test_the_allowed_upstream_works_by_address_and_by_a_name_resolving_to_it(owner, service, world):
    project = await owner.project()
    wf = await owner.workflow(project, ONE_CALL)
    port = world.httpd.server_address[1]
    api = urlsplit(service.url).port
    by_ip, by_name, other = await asyncio.gather(
        _call(owner, wf["id"], f"http://127.0.0.1:{port}/ok/egress-ip"),
        _call(owner, wf["id"], f"http://localhost:{port}/ok/egress-name"),
        _call(owner, wf["id"], f"http://localhost:{api}/healthz"))
    assert by_ip["status"] == "succeeded" and by_name["status"] == "succeeded"
    assert by_name["output"]["body"]["headers"]["host"] == f"localhost:{port}"  # original Host kept
    assert other["error"]["type"] == "egress_denied"  # the allow entry opens a port, not the host


async def test_a_webhook_sender_cannot_aim_a_call_at_the_service(owner, service):
    project = await owner.project()
    wf = await owner.workflow(project, ONE_CALL)
    body = json.dumps({"target": f"{service.url}/metrics"}).encode()
    async with httpx.AsyncClient(base_url=service.url) as anon:
        r = await anon.post(f"/hooks/{wf['id']}", content=body, headers=sign_hook(wf["webhook_secret"], body))
    assert r.status_code == 202, r.text
    run = await owner.wait(r.json()["run_id"])
    assert steps_by_key(run)["call"]["error"]["type"] == "egress_denied"


# ---------------------------------------------------------------- MESHHOOK_EGRESS_ALLOW entries
@pytest.fixture(scope="module")
async def allowing(admin_url, jwks_server, keys, logs_dir, world):
    """A service on a database of its own (its worker must be the only one running these runs)
    whose allow list opens the name `localhost` (any port) and 127.0.0.0/8, World's port only."""
    name = f"meshhook_test_egress_{uuid.uuid4().hex[:8]}"
    url = await support.create_database(admin_url, name)
    from app.db.migrate import upgrade

    await asyncio.to_thread(upgrade, url)
    allow = f"localhost, 127.0.0.0/8:{world.httpd.server_address[1]}"
    env = support.service_env(url, jwks_server.url, MESHHOOK_EGRESS_ALLOW=allow)
    proc, base = await asyncio.to_thread(support.start_api, env, logs_dir / "egress-allow.log")
    client = Client(base, keys)
    yield type("Allowing", (), {"url": base, "client": client})
    await client.aclose()
    proc.terminate()
    await support.drop_database(admin_url, name)


async def test_allow_entries_open_a_name_or_a_network_and_port(allowing, world):
    owner = allowing.client
    project = await owner.project()
    wf = await owner.workflow(project, ONE_CALL)
    api, port = urlsplit(allowing.url).port, world.httpd.server_address[1]
    by_name, same_address, cidr_port, cidr_other_port = await asyncio.gather(
        _call(owner, wf["id"], f"http://localhost:{api}/healthz"),  # host entry: any port of that name
        _call(owner, wf["id"], f"http://127.0.0.1:{api}/healthz"),  # the same address, not by that name
        _call(owner, wf["id"], f"http://127.0.0.1:{port}/ok/egress-cidr"),  # 127.0.0.0/8 on World's port
        _call(owner, wf["id"], f"http://127.0.0.2:{api}/healthz"))  # in the network, another port
    assert by_name["status"] == "succeeded" and by_name["output"]["body"] == {"status": "ok"}
    assert same_address["error"]["type"] == "egress_denied"
    assert cidr_port["status"] == "succeeded"
    assert cidr_other_port["error"]["type"] == "egress_denied"


async def test_a_bad_allow_list_stops_the_process_with_one_line_naming_the_entry(tmp_path):
    env = base_env(tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
                   MESHHOOK_EGRESS_ALLOW="10.0.0.0/8,127.0.0.1:99999")
    rc, _out, err = await meshhook("worker", env=env)
    assert_one_clear_line(rc, err, "MESHHOOK_EGRESS_ALLOW", "'127.0.0.1:99999'")
