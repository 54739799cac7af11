"""Settings the console relies on, against a second API process (no worker): CORS for the console's
origins (bearer auth without credentials, Authorization allowed, preflight cached) and the SSE heartbeat."""
import httpx
import pytest

from tests import support


@pytest.fixture(scope="module")
def cors_service(service_env, logs_dir):
    env = dict(service_env, MESHHOOK_CORS_ORIGINS="https://console.example.test,http://localhost:5173",
               MESHHOOK_SSE_PING_S="0.3")
    proc, base = support.start_api(env, logs_dir / "cors.log", worker=False)
    yield base
    proc.terminate()


def test_preflight_from_the_console_origin_is_allowed_and_cached(cors_service):
    r = httpx.options(cors_service + "/runs/00000000-0000-0000-0000-000000000000/resume", headers={
        "Origin": "https://console.example.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://console.example.test"
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed
    assert int(r.headers["access-control-max-age"]) >= 600
    assert "access-control-allow-credentials" not in r.headers


def test_other_origins_get_no_cors_headers(cors_service, keys):
    r = httpx.options(cors_service + "/projects", headers={
        "Origin": "https://evil.example.test", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    token = keys.token(support.new_user())
    r = httpx.get(cors_service + "/projects", headers={"Origin": "http://localhost:5173",
                                                       "Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


async def test_an_idle_event_stream_sends_heartbeat_comments(cors_service, keys):
    """A run asleep in a long delay has nothing to say: its stream carries heartbeat comments."""
    token = keys.token(support.new_user())
    async with httpx.AsyncClient(base_url=cors_service, headers={"Authorization": f"Bearer {token}"},
                                 timeout=10) as c:
        project = (await c.post("/projects", json={"name": "hb"})).json()["id"]
        wf = (await c.post(f"/projects/{project}/workflows", json={
            "slug": "hb", "name": "hb", "definition": {
                "nodes": [{"id": "start", "data": {"type": "webhook"}},
                          {"id": "wait", "data": {"type": "delay", "config": {"seconds": 600}}}],
                "edges": [{"source": "start", "target": "wait"}]}})).json()
        run_id = (await c.post(f"/workflows/{wf['id']}/runs", json={"input": {}})).json()["id"]
        comments_in_a_row, events = 0, []
        async with c.stream("GET", f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    comments_in_a_row += 1
                elif line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
                    comments_in_a_row = 0
                if comments_in_a_row >= 3:
                    break
        assert events and events[0] == "run_queued"
        assert not {"run_succeeded", "run_failed", "run_cancelled"} & set(events)
        await c.post(f"/runs/{run_id}/cancel")


async def test_an_event_stream_ends_when_its_token_expires(cors_service, keys):
    """A stream must not outlive the token that opened it: it closes after `exp`, and the client
    reconnects with a fresh token and Last-Event-ID."""
    import time

    user = support.new_user()
    long_lived = keys.token(user)
    async with httpx.AsyncClient(base_url=cors_service, headers={"Authorization": f"Bearer {long_lived}"},
                                 timeout=30) as c:
        project = (await c.post("/projects", json={"name": "exp"})).json()["id"]
        wf = (await c.post(f"/projects/{project}/workflows", json={
            "slug": "exp", "name": "exp", "definition": {
                "nodes": [{"id": "start", "data": {"type": "webhook"}},
                          {"id": "wait", "data": {"type": "delay", "config": {"seconds": 600}}}],
                "edges": [{"source": "start", "target": "wait"}]}})).json()
        run_id = (await c.post(f"/workflows/{wf['id']}/runs", json={"input": {}})).json()["id"]
        short = keys.token(user, exp=int(time.time()) + 2)
        started = time.monotonic()
        async with c.stream("GET", f"/runs/{run_id}/events", headers={
                "Accept": "text/event-stream", "Authorization": f"Bearer {short}"}) as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_lines():
                assert time.monotonic() - started < 20, "the stream outlived its token"
        await c.post(f"/runs/{run_id}/cancel")
