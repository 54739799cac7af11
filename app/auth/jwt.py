"""Supabase access-token verification (DESIGN §2).

ES256/RS256 through the project's JWKS (cached ≤ 10 min, one refetch on an unknown
``kid``, refetches rate-limited), legacy HS256 with the shared secret, and optionally
asking Supabase Auth itself. Verified tokens are cached until they expire, so a client
that sends the same token on every request pays for the signature check once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from app.errors import Unauthorized
from app.settings import Settings

ASYMMETRIC = {"ES256", "RS256"}
_KTY_FOR_ALG = {"ES256": "EC", "RS256": "RSA"}


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    claims: dict[str, Any]


class JwksCache:
    def __init__(self, url: str | None, http: httpx.AsyncClient, ttl_s: float, min_refetch_s: float):
        self.url = url
        self.http = http
        self.ttl_s = ttl_s
        self.min_refetch_s = min_refetch_s
        self.keys: dict[str, PyJWK] = {}
        self.fetched_at = 0.0
        self.attempted_at = -1e9
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        self.attempted_at = time.monotonic()
        if not self.url:
            return
        try:
            resp = await self.http.get(self.url, timeout=3.0)
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError):
            return  # keep what we had; a later request may retry after the rate limit
        keys: dict[str, PyJWK] = {}
        for jwk in data.get("keys", []) if isinstance(data, dict) else []:
            try:
                key = PyJWK(jwk)
            except Exception:  # noqa: BLE001 - skip keys we cannot use (e.g. oct, unknown curves)
                continue
            keys[jwk.get("kid") or ""] = key
        self.keys = keys
        self.fetched_at = time.monotonic()

    async def get(self, kid: str) -> PyJWK | None:
        now = time.monotonic()
        if now - self.fetched_at > self.ttl_s:
            async with self._lock:
                if (
                    time.monotonic() - self.fetched_at > self.ttl_s
                    and time.monotonic() - self.attempted_at >= self.min_refetch_s
                ):
                    await self._fetch()
        key = self.keys.get(kid)
        if key is None and time.monotonic() - self.attempted_at >= self.min_refetch_s:
            async with self._lock:
                if kid not in self.keys and time.monotonic() - self.attempted_at >= self.min_refetch_s:
                    await self._fetch()
            key = self.keys.get(kid)
        return key


class TokenVerifier:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, hs_secret: str | None = None):
        self.settings = settings
        self.hs_secret = hs_secret if hs_secret is not None else settings.supabase_jwt_secret
        self.jwks = JwksCache(settings.jwks_url, http, settings.jwks_cache_s, settings.jwks_min_refetch_s)
        self.http = http
        self._cache: OrderedDict[str, tuple[float, User]] = OrderedDict()
        self._cache_max = 10_000
        self._supabase: Any = None  # a supabase AsyncClient, created on first use

    async def verify(self, token: str) -> User:
        hit = self._cache.get(token)
        now = time.time()
        if hit is not None:
            exp, user = hit
            if now <= exp + self.settings.jwt_leeway_s:
                return user
            self._cache.pop(token, None)
        user = await self._verify(token)
        exp = float(user.claims.get("exp", now))
        self._cache[token] = (exp, user)
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return user

    async def _verify(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is malformed.") from None
        alg = header.get("alg")
        if not isinstance(alg, str):  # e.g. a list: not hashable, and never a valid JWS header
            raise Unauthorized("The token's algorithm is not accepted.")
        if alg in ASYMMETRIC:
            key = await self.jwks.get(header.get("kid") or "")
            if key is None:
                if self.settings.supabase_auth_verify:
                    return await self._verify_with_supabase(token)
                raise Unauthorized("The token's signing key is unknown.")
            if key.key_type != _KTY_FOR_ALG[alg] or (key.algorithm_name and key.algorithm_name != alg):
                raise Unauthorized("The token's algorithm does not match its key.")
            claims = self._decode(token, key.key, alg)
        elif alg == "HS256":
            if not self.hs_secret:
                if self.settings.supabase_auth_verify:
                    return await self._verify_with_supabase(token)
                raise Unauthorized("HS256 tokens are not accepted here.")
            claims = self._decode(token, self.hs_secret, "HS256")
        else:
            raise Unauthorized("The token's algorithm is not accepted.")
        return self._user(claims)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.settings.jwt_audience,
                issuer=self.settings.issuer,
                leeway=self.settings.jwt_leeway_s,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token's audience is not accepted.") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The token's issuer is not accepted.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None

    def _user(self, claims: dict[str, Any]) -> User:
        sub = claims.get("sub")
        try:
            uid = uuid.UUID(sub) if isinstance(sub, str) else None
        except ValueError:
            uid = None
        # Only the canonical 8-4-4-4-12 form: Python also parses "urn:uuid:…" and "{…}", which
        # Postgres' auth.uid() cannot cast, so such a token would fail later as a 4xx/5xx.
        if uid is None or str(uid) != str(sub).lower():
            raise Unauthorized("The token's subject is not a user id.")
        if claims.get("role") != "authenticated":
            raise Unauthorized("The token's role is not 'authenticated'.")
        return User(uid, claims)

    async def _verify_with_supabase(self, token: str) -> User:
        """Ask Supabase Auth whether the token is good (projects without keys or a shared secret)."""
        if not (self.settings.supabase_url and self.settings.supabase_anon_key):
            raise Unauthorized("The token cannot be verified here.")
        if self._supabase is None:
            from supabase import acreate_client

            self._supabase = await acreate_client(self.settings.supabase_url, self.settings.supabase_anon_key)
        try:
            resp = await self._supabase.auth.get_user(token)
        except Exception:  # noqa: BLE001 - any failure of the remote check is a rejection
            raise Unauthorized("The token was not accepted by Supabase Auth.") from None
        if resp is None or getattr(resp, "user", None) is None:
            raise Unauthorized("The token was not accepted by Supabase Auth.")
        claims = jwt.decode(token, options={"verify_signature": False, "verify_aud": False})
        if claims.get("aud") != self.settings.jwt_audience:
            raise Unauthorized("The token's audience is not accepted.")
        if float(claims.get("exp", 0)) + self.settings.jwt_leeway_s < time.time():
            raise Unauthorized("The token has expired.")
        if str(claims.get("sub")) != str(resp.user.id):
            raise Unauthorized("The token was not accepted by Supabase Auth.")
        return self._user(claims)


def mint_dev_token(
    secret: str,
    sub: str,
    *,
    issuer: str | None,
    audience: str = "authenticated",
    ttl_s: int = 3600,
    email: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": "authenticated", "aud": audience, "iat": now, "exp": now + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")
