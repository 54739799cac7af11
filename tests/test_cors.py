"""CORS for the console's origins: bearer auth without credentials, Authorization allowed, preflight cached."""
import httpx
import pytest

from tests import support


@pytest.fixture(scope="module")
def cors_service(service_env, logs_dir):
    env = dict(service_env, MESHHOOK_CORS_ORIGINS="https://console.example.test,http://localhost:5173")
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
