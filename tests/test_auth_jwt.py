"""JWT verification (DESIGN §2): which Supabase access tokens the service accepts, and that
every other token — or no token — gets 401 + `WWW-Authenticate: Bearer` + problem+json.
Tokens are real (signed with keys generated for the session); the JWKS is served over
loopback HTTP, so the caching and refetch rules are exercised for real."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.auth.jwt import TokenVerifier
from app.errors import Unauthorized
from app.settings import Settings
from tests import support

PROBE = "/projects"


def b64url(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, claims: dict, signature: bytes = b"", hmac_key: bytes | None = None) -> str:
    """A JWT assembled by hand, so nothing in a library can refuse to build it."""
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature) if signature else ''}"


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


_clients: dict[str, httpx.AsyncClient] = {}


@pytest.fixture(scope="module", autouse=True)
async def _close_clients():
    yield
    for c in _clients.values():
        await c.aclose()
    _clients.clear()


async def get(service, authorization: str | None) -> httpx.Response:
    """GET the probe with exactly this Authorization header (or none), over one kept-alive client."""
    headers = {} if authorization is None else {"Authorization": authorization}
    http = _clients.get(service.url)
    if http is None:
        http = _clients[service.url] = httpx.AsyncClient(base_url=service.url, timeout=30)
    return await http.get(PROBE, headers=headers)


def assert_rejected(resp: httpx.Response) -> dict:
    assert resp.status_code == 401, resp.text
    assert resp.headers.get("www-authenticate", "").startswith("Bearer"), resp.headers
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == 401
    assert body["type"] and body["title"] and body["detail"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


# ---------------------------------------------------------------- accepted tokens
@pytest.mark.parametrize("alg", ["HS256", "ES256", "RS256"])
async def test_a_valid_token_of_each_algorithm_is_accepted(service, keys, jwks_server, alg):
    user = support.new_user()
    resp = await get(service, f"Bearer {keys.token(user, alg)}")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"items": [], "next_cursor": None}


async def test_the_verified_user_is_the_tokens_subject(service, keys, jwks_server):
    user = support.new_user()
    async with httpx.AsyncClient(base_url=service.url, timeout=30,
                                 headers={"Authorization": f"Bearer {keys.token(user, 'ES256')}"}) as http:
        created = await http.post("/projects", json={"name": "mine"})
        assert created.status_code == 201, created.text
        assert created.json()["created_by"] == user
        assert created.json()["role"] == "owner"
    # the same user through another algorithm sees the same project
    listed = await get(service, f"Bearer {keys.token(user, 'RS256')}")
    assert [p["id"] for p in listed.json()["items"]] == [created.json()["id"]]


async def test_the_bearer_scheme_is_case_insensitive(service, keys, jwks_server):
    resp = await get(service, f"bearer {keys.token(support.new_user())}")
    assert resp.status_code == 200, resp.text


async def test_a_token_expired_within_the_leeway_is_accepted(service, keys, jwks_server):
    resp = await get(service, f"Bearer {keys.token(support.new_user(), exp=int(time.time()) - 5)}")
    assert resp.status_code == 200, resp.text


# ---------------------------------------------------------------- the rejection matrix
def _claims(keys, **over) -> dict:
    return keys.claims(support.new_user(), **over)


REJECTED_CLAIMS = {
    "expired": lambda k: dict(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
    "no exp": lambda k: dict(exp=None),
    "wrong aud": lambda k: dict(aud="anon"),
    "no aud": lambda k: dict(aud=None),
    "wrong iss": lambda k: dict(iss="https://evil.example.test/auth/v1"),
    "no iss": lambda k: dict(iss=None),
    "sub not a uuid": lambda k: dict(sub="not-a-uuid"),
    "sub uuid with junk": lambda k: dict(sub=str(uuid.uuid4()) + "x"),
    "sub urn form": lambda k: dict(sub="urn:uuid:" + str(uuid.uuid4())),
    "sub missing": lambda k: dict(sub=None),
    "sub a number": lambda k: dict(sub=12345),
    "role anon": lambda k: dict(role="anon"),
    "role service_role": lambda k: dict(role="service_role"),
    "role missing": lambda k: dict(role=None),
}


@pytest.mark.parametrize("alg", ["HS256", "ES256"])
@pytest.mark.parametrize("case", list(REJECTED_CLAIMS))
async def test_tokens_with_bad_claims_are_rejected(service, keys, jwks_server, case, alg):
    over = REJECTED_CLAIMS[case](keys)
    sub = over.pop("sub", support.new_user())
    if sub is None or not isinstance(sub, str):
        claims = keys.claims(support.new_user(), **over)
        if sub is None:
            claims.pop("sub")
        else:
            claims["sub"] = sub
        key = support.HS_SECRET if alg == "HS256" else keys.ec_key
        headers = {"kid": "ec-1"} if alg == "ES256" else None
        token = jwt.encode(claims, key, algorithm=alg, headers=headers)
    else:
        token = keys.token(sub, alg, **over)
    assert_rejected(await get(service, f"Bearer {token}"))


async def test_a_bad_signature_is_rejected(service, keys, jwks_server):
    for alg in ("HS256", "ES256", "RS256"):
        token = keys.token(support.new_user(), alg)
        head, payload, sig = token.split(".")
        # same header and signature, another payload: the signature no longer matches
        other = b64url(_claims(keys))
        assert_rejected(await get(service, f"Bearer {head}.{other}.{sig}"))
        # flip the signature itself
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[len(raw) // 2] ^= 0x01
        assert_rejected(await get(service, f"Bearer {head}.{payload}.{b64url(bytes(raw))}"))


async def test_an_hs256_token_signed_with_another_secret_is_rejected(service, keys, jwks_server):
    token = jwt.encode(_claims(keys), "another-secret-that-is-long-enough-0123456789abcdef", algorithm="HS256")
    assert_rejected(await get(service, f"Bearer {token}"))


async def test_a_token_signed_by_an_unpublished_key_is_rejected(service, keys, jwks_server):
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(keys), stranger, algorithm="ES256", headers={"kid": "ec-1"})
    assert_rejected(await get(service, f"Bearer {token}"))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_rejected(service, keys, jwks_server, alg):
    for header in ({"alg": alg, "typ": "JWT"}, {"alg": alg, "typ": "JWT", "kid": "ec-1"}):
        token = hand_made(header, _claims(keys))
        assert_rejected(await get(service, f"Bearer {token}"))
        # some libraries strip a trailing dot; try the two-segment form too
        assert_rejected(await get(service, f"Bearer {token.rstrip('.')}"))


@pytest.mark.parametrize("kid,key_attr", [("rsa-1", "rsa_key"), ("ec-1", "ec_key")])
async def test_algorithm_confusion_with_the_public_key_as_hmac_secret_is_rejected(service, keys, jwks_server,
                                                                                 kid, key_attr):
    pem = public_pem(getattr(keys, key_attr))
    # The attacker knows the public key (it is published) and "signs" with it as an HMAC key.
    for secret in (pem, pem.strip()):
        token = hand_made({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(keys), hmac_key=secret)
        assert_rejected(await get(service, f"Bearer {token}"))
    # The published JWK itself as an HMAC key material, too.
    jwk = next(k for k in keys.jwks()["keys"] if k["kid"] == kid)
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(keys),
                      hmac_key=json.dumps(jwk).encode())
    assert_rejected(await get(service, f"Bearer {token}"))


async def test_an_asymmetric_alg_that_does_not_match_the_keys_type_is_rejected(service, keys, jwks_server):
    # An RS256 header pointing at the EC key, and an ES256 header pointing at the RSA key.
    claims = _claims(keys)
    rs = jwt.encode(claims, keys.rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    es = jwt.encode(claims, keys.ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert_rejected(await get(service, f"Bearer {rs}"))
    assert_rejected(await get(service, f"Bearer {es}"))


@pytest.mark.parametrize("alg", ["HS384", "HS512", "PS256", "ES384", "RS512", "EdDSA"])
async def test_algorithms_outside_the_allowed_set_are_rejected(service, keys, jwks_server, alg):
    # Well-formed header and payload; whatever the signature, the algorithm alone must decide.
    token = hand_made({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, _claims(keys), signature=b"x" * 64)
    assert_rejected(await get(service, f"Bearer {token}"))


@pytest.mark.parametrize("header", [
    {"alg": ["HS256"]}, {"alg": {"HS256": True}}, {"alg": None}, {"alg": 256}, {"typ": "JWT"},
    {"alg": "ES256", "kid": ["ec-1"]}, {"alg": "ES256", "kid": 1}, {"alg": "HS256", "crit": ["exp"]},
])
async def test_odd_headers_are_rejected_not_crashed_on(service, keys, jwks_server, header):
    for hmac_key in (support.HS_SECRET.encode(), None):
        token = hand_made(header, _claims(keys), signature=b"sig" if hmac_key is None else b"", hmac_key=hmac_key)
        assert_rejected(await get(service, f"Bearer {token}"))


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"a string"', b"null", b"{not json", b"\xff\xfe"])
async def test_a_payload_that_is_not_a_claims_object_is_rejected(service, payload):
    head = b64url({"alg": "HS256", "typ": "JWT"})
    signing_input = f"{head}.{b64url(payload)}"
    sig = hmac.new(support.HS_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert_rejected(await get(service, f"Bearer {signing_input}.{b64url(sig)}"))


@pytest.mark.parametrize("claims", [
    {"exp": "tomorrow"}, {"exp": [1]}, {"aud": ["anon"]}, {"aud": 5}, {"iat": "now"}, {"nbf": 4102444800},
])
async def test_claims_of_the_wrong_shape_or_not_yet_valid_are_rejected(service, keys, jwks_server, claims):
    token = jwt.encode(_claims(keys, **claims), support.HS_SECRET, algorithm="HS256")
    assert_rejected(await get(service, f"Bearer {token}"))


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Bearer",
    "Basic dXNlcjpwYXNzd29yZA==",
    "Token abc.def.ghi",
    "Bearer garbage",
    "Bearer a.b.c",
    "Bearer ...",
    "Bearer eyJhbGciOiJIUzI1NiJ9",
    "Bearer eyJub3Rqc29uIjp9.eyJzdWIiOiJ4In0.c2ln",
    "Bearer " + "A" * 5000,
])
async def test_missing_malformed_or_non_bearer_authorization_is_rejected(service, authorization):
    body = assert_rejected(await get(service, authorization))
    assert body["instance"] == PROBE


async def test_a_basic_scheme_carrying_a_valid_token_is_still_rejected(service, keys, jwks_server):
    assert_rejected(await get(service, f"Basic {keys.token(support.new_user())}"))


# ---------------------------------------------------------------- JWKS caching and refetch
def extended_jwks(keys, *extra: dict):
    base = type(keys).jwks

    def jwks():
        doc = base(keys)
        doc["keys"].extend(extra)
        return doc

    return jwks


def ec_jwk(private_key, kid: str) -> dict:
    doc = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    doc.update(kid=kid, alg="ES256", use="sig")
    return doc


async def test_a_key_published_after_the_jwks_was_cached_is_accepted_after_one_refetch(
        service, keys, jwks_server, monkeypatch):
    # The service has the JWKS cached once it accepted an ES256 token.
    assert (await get(service, f"Bearer {keys.token(support.new_user(), 'ES256')}")).status_code == 200
    hits_before = jwks_server.hits
    assert (await get(service, f"Bearer {keys.token(support.new_user(), 'ES256')}")).status_code == 200
    assert jwks_server.hits == hits_before, "a known kid must be served from the cache"

    rotated = ec.generate_private_key(ec.SECP256R1())
    kid = f"ec-rotated-{uuid.uuid4().hex[:6]}"
    monkeypatch.setattr(keys, "jwks", extended_jwks(keys, ec_jwk(rotated, kid)))
    token = jwt.encode(_claims(keys), rotated, algorithm="ES256", headers={"kid": kid})

    async def accepted():
        # A refetch may be held back by the rate limit for a moment; then exactly one happens.
        return (await get(service, f"Bearer {token}")).status_code == 200

    await support.wait_for(accepted, timeout=10, interval=0.1, what="the rotated key to be accepted")
    assert jwks_server.hits == hits_before + 1
    # From now on the new key comes from the cache.
    again = jwt.encode(_claims(keys), rotated, algorithm="ES256", headers={"kid": kid})
    assert (await get(service, f"Bearer {again}")).status_code == 200
    assert jwks_server.hits == hits_before + 1


async def test_unknown_kids_do_not_cause_a_fetch_per_request(service, keys, jwks_server):
    # Many tokens with random kids at once: each is rejected, and the JWKS endpoint is asked
    # only as often as the rate limit allows (the service runs with MESHHOOK_JWKS_MIN_REFETCH_S=0.5).
    hits_before = jwks_server.hits
    started = time.monotonic()
    tokens = [jwt.encode(_claims(keys), keys.ec_key, algorithm="ES256", headers={"kid": uuid.uuid4().hex})
              for _ in range(40)]
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        responses = await asyncio.gather(*(http.get(PROBE, headers={"Authorization": f"Bearer {t}"})
                                           for t in tokens))
    elapsed = time.monotonic() - started
    for r in responses:
        assert_rejected(r)
    fetches = jwks_server.hits - hits_before
    allowed = 2 + int(elapsed / 0.5)  # one per rate-limit window, plus one at each edge
    assert fetches <= allowed, f"{fetches} JWKS fetches for 40 unknown kids in {elapsed:.2f}s"
    assert fetches < len(tokens)


# ---------------------------------------------------------------- TokenVerifier, unit level
def verifier_settings(jwks_server, **over) -> Settings:
    values = dict(supabase_url=jwks_server.url, supabase_jwt_secret=support.HS_SECRET, database_url=None,
                  jwks_min_refetch_s=60.0)
    values.update(over)
    return Settings(**values)


async def test_verifier_fetches_the_jwks_once_for_many_unknown_kids(keys, jwks_server):
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(verifier_settings(jwks_server), http)
        user = await verifier.verify(keys.token(support.new_user(), "RS256"))
        assert user.claims["role"] == "authenticated"
        hits = jwks_server.hits
        for _ in range(25):
            token = jwt.encode(_claims(keys), keys.ec_key, algorithm="ES256", headers={"kid": uuid.uuid4().hex})
            with pytest.raises(Unauthorized):
                await verifier.verify(token)
        # The last fetch was just now, so the rate limit (60 s here) holds every refetch back.
        assert jwks_server.hits == hits


async def test_verifier_refetches_once_on_an_unknown_kid(keys, jwks_server, monkeypatch):
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(verifier_settings(jwks_server, jwks_min_refetch_s=0.0), http)
        await verifier.verify(keys.token(support.new_user(), "ES256"))
        hits = jwks_server.hits
        rotated = ec.generate_private_key(ec.SECP256R1())
        monkeypatch.setattr(keys, "jwks", extended_jwks(keys, ec_jwk(rotated, "ec-unit-2")))
        user_id = support.new_user()
        token = jwt.encode(keys.claims(user_id), rotated, algorithm="ES256", headers={"kid": "ec-unit-2"})
        user = await verifier.verify(token)
        assert str(user.id) == user_id
        assert jwks_server.hits == hits + 1


async def test_verifier_without_a_shared_secret_refuses_hs256(keys, jwks_server):
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(verifier_settings(jwks_server, supabase_jwt_secret=None), http)
        with pytest.raises(Unauthorized):
            await verifier.verify(keys.token(support.new_user(), "HS256"))
        # an HS256 token "signed" with the published RSA key is refused as well
        pem = public_pem(keys.rsa_key)
        forged = hand_made({"alg": "HS256", "kid": "rsa-1"}, _claims(keys), hmac_key=pem)
        with pytest.raises(Unauthorized):
            await verifier.verify(forged)
        # while the published keys still work
        assert (await verifier.verify(keys.token(support.new_user(), "ES256"))).claims["aud"] == "authenticated"


async def test_verifier_honours_a_configured_issuer(keys, jwks_server):
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(verifier_settings(jwks_server, supabase_jwt_issuer="https://auth.example.test"), http)
        with pytest.raises(Unauthorized):
            await verifier.verify(keys.token(support.new_user()))  # iss is the JWKS server's
        ok = keys.token(support.new_user(), iss="https://auth.example.test")
        assert (await verifier.verify(ok)).claims["iss"] == "https://auth.example.test"


async def test_verifier_does_not_serve_an_expired_token_from_its_cache(keys, jwks_server):
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(verifier_settings(jwks_server, jwt_leeway_s=0), http)
        token = keys.token(support.new_user(), exp=int(time.time()) + 1)
        await verifier.verify(token)

        async def rejected():
            try:
                await verifier.verify(token)
            except Unauthorized:
                return True
            return False

        await support.wait_for(rejected, timeout=5, interval=0.1, what="the cached token to expire")
