"""Verify-through-Supabase-Auth mode: for projects that neither publish keys nor share their secret,
the service asks Supabase Auth (GET /auth/v1/user, through the `supabase` client) and caches the answer.
Supabase Auth is outside this machine, so a local stand-in answers on loopback."""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest

from app.auth.jwt import TokenVerifier
from app.errors import Unauthorized
from app.settings import Settings

PROJECT_SECRET = "a-secret-only-supabase-knows-0123456789-abcdef"


class FakeSupabaseAuth:
    def __init__(self):
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/auth/v1/user":
                    self.send_response(404)
                    self.end_headers()
                    return
                outer.calls += 1
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                try:
                    claims = jwt.decode(token, PROJECT_SECRET, algorithms=["HS256"], audience="authenticated")
                    status, body = 200, {"id": claims["sub"], "aud": "authenticated", "role": "authenticated",
                                         "email": "u@example.test", "app_metadata": {}, "user_metadata": {},
                                         "created_at": "2026-01-01T00:00:00Z"}
                except jwt.PyJWTError:
                    status, body = 401, {"code": 401, "msg": "invalid JWT"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def auth_server():
    srv = FakeSupabaseAuth()
    yield srv
    srv.httpd.shutdown()


def token(secret: str, sub: str, **over) -> str:
    now = int(time.time())
    claims = {"sub": sub, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 600} | over
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_tokens_are_verified_by_supabase_auth_and_cached(auth_server):
    anon = jwt.encode({"role": "anon", "iss": "supabase"}, "x" * 32, algorithm="HS256")
    settings = Settings(SUPABASE_URL=auth_server.url, SUPABASE_ANON_KEY=anon, MESHHOOK_SUPABASE_AUTH_VERIFY=True,
                        SUPABASE_JWT_SECRET=None, SUPABASE_JWT_ISSUER="")
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, http, hs_secret=None)
        sub = str(uuid.uuid4())
        good = token(PROJECT_SECRET, sub)
        user = await verifier.verify(good)
        assert str(user.id) == sub and user.claims["role"] == "authenticated"
        calls = auth_server.calls
        assert calls >= 1  # Supabase Auth was asked
        assert (await verifier.verify(good)).id == user.id
        assert auth_server.calls == calls  # cached until the token expires

        with pytest.raises(Unauthorized):
            await verifier.verify(token("not-the-project-secret-0123456789-abcdef", sub))
        with pytest.raises(Unauthorized):  # Supabase accepts it, but it is not an access token for a user
            await verifier.verify(token(PROJECT_SECRET, sub, role="service_role"))


async def test_without_the_mode_unverifiable_tokens_are_rejected(auth_server):
    settings = Settings(SUPABASE_URL=auth_server.url, SUPABASE_JWT_SECRET=None, SUPABASE_JWT_ISSUER="")
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, http, hs_secret=None)
        calls = auth_server.calls
        with pytest.raises(Unauthorized):
            await verifier.verify(token(PROJECT_SECRET, str(uuid.uuid4())))
        assert auth_server.calls == calls
