"""Bad input of every kind gets a clean 4xx problem+json and leaves nothing half-written:
oversized bodies (declared or streamed) → 413, 100,000-deep JSON, invalid UTF-8, values
jsonb cannot hold, a flood of badly signed webhooks → 401, and a 2 MB step output is
stored truncated."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from app.settings import Settings
from tests.conftest import linear, sign_hook
from tests.faults.conftest import MAX_BODY_BYTES, is_problem, record, start_worker, wait_final

DEEP = 100_000


def deep_arrays(n: int = DEEP) -> bytes:
    return b"[" * n + b"]" * n


def deep_objects(n: int = DEEP) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


async def _counts(db, project_id: str, workflow_ids: list[str], failed_run: str) -> dict:
    pid = uuid.UUID(project_id)
    return {
        "runs": await db.fetchval("select count(*) from runs where project_id = $1", pid),
        "steps": await db.fetchval("select count(*) from step_runs where project_id = $1", pid),
        "events": await db.fetchval("select count(*) from run_events where project_id = $1", pid),
        "workflows": await db.fetchval("select count(*) from workflows where project_id = $1", pid),
        "versions": await db.fetchval(
            "select count(*) from workflow_versions where workflow_id = any($1::uuid[])", workflow_ids),
        "secrets": await db.fetchval("select count(*) from secrets where project_id = $1", pid),
        "members": await db.fetchval("select count(*) from project_members where project_id = $1", pid),
        "children": await db.fetchval("select count(*) from runs where parent_run_id = $1", uuid.UUID(failed_run)),
        "projects": await db.fetchval("select count(*) from projects"),
    }


async def test_bad_input_gets_a_clean_4xx_and_writes_nothing(faults_api, faults_env, faults_logs, faults_db,
                                                             make_user, world, procs):
    owner = make_user()
    project = await owner.project("bad-input")
    tag = f"bad-{uuid.uuid4().hex[:8]}"
    sink = await owner.workflow(project, linear(("start", "webhook", {}), ("t", "transform", {"expression": "input"})))
    failing = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/status/400/{tag}", "retry": {"max_attempts": 1}})))
    big = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/big/{tag}?kb=2000"}),
        ("after", "transform", {"expression": "steps.call.status"})))

    procs.append(start_worker(faults_env, faults_logs, "bad-input"))
    failed_run = await owner.start(failing["id"])
    big_run = await owner.start(big["id"])
    statuses = await wait_final(faults_db, [failed_run, big_run], 60)
    assert statuses == {failed_run: "failed", big_run: "succeeded"}

    # ---- a huge step output is stored truncated, and still readable
    row = await faults_db.fetchrow(
        "select output, output_truncated, octet_length(output::text) as size from step_runs"
        " where run_id = $1 and step_key = 'call'", uuid.UUID(big_run))
    max_output = Settings.model_fields["max_output_bytes"].default
    assert row["output_truncated"] is True
    assert row["output"]["_truncated"] is True and row["output"]["size_bytes"] > 2_000_000
    assert row["size"] <= max_output
    r = await owner.get(f"/runs/{big_run}/steps/call")
    assert r.status_code == 200 and r.json()["output"]["_truncated"] is True

    wf_ids = [sink["id"], failing["id"], big["id"]]
    before = await _counts(faults_db, project, wf_ids, failed_run)
    http = owner.http
    json_h = {"Content-Type": "application/json"}
    secret = sink["webhook_secret"]
    outcomes: list[tuple[str, int]] = []

    async def expect(label: str, method: str, path: str, body, *, codes=range(400, 500), headers=None):
        hdrs = {**json_h, **(headers or {})}
        r = await http.request(method, path, content=body, headers=hdrs, timeout=60)
        outcomes.append((label, r.status_code))
        assert r.status_code in codes, (label, r.status_code, r.text[:300])
        assert is_problem(r), (label, r.headers.get("content-type"), r.text[:300])
        return r

    def hook_headers(body: bytes) -> dict:
        return sign_hook(secret, body)

    targets = [
        ("start", "POST", f"/workflows/{sink['id']}/runs", lambda inner: b'{"input": {"x": ' + inner + b"}}"),
        ("resume", "POST", f"/runs/{failed_run}/resume",
         lambda inner: b'{"from_step": "call", "input": {"x": ' + inner + b"}}"),
        ("project", "POST", "/projects", lambda inner: b'{"name": ' + inner + b"}"),
        ("workflow", "POST", f"/projects/{project}/workflows",
         lambda inner: b'{"slug": "deep", "name": "deep", "definition": {"nodes": ' + inner + b', "edges": []}}'),
        ("version", "POST", f"/workflows/{sink['id']}/versions",
         lambda inner: b'{"definition": {"nodes": ' + inner + b', "edges": []}}'),
        ("secret", "PUT", f"/projects/{project}/secrets/api_key", lambda inner: b'{"value": ' + inner + b"}"),
        ("member", "POST", f"/projects/{project}/members",
         lambda inner: b'{"user_id": ' + inner + b', "role": "editor"}'),
    ]

    # ---- oversized bodies: 413 whether the length is declared or the body is streamed
    pad = b'"' + b"x" * (MAX_BODY_BYTES + 10) + b'"'
    for label, method, path, wrap in targets:
        await expect(f"{label}/oversized", method, path, wrap(pad), codes={413})

        async def chunks(data=wrap(pad)):
            for i in range(0, len(data), 65536):
                yield data[i:i + 65536]

        await expect(f"{label}/oversized-chunked", method, path, chunks(), codes={413})
    big_hook = b'{"pad": ' + pad + b"}"
    await expect("hook/oversized", "POST", f"/hooks/{sink['id']}", big_hook, codes={413},
                 headers=hook_headers(big_hook))

    # ---- 100,000-deep JSON, moderately deep JSON, invalid UTF-8, unstorable values
    bad_values = {
        "deep-arrays": deep_arrays(),
        "deep-objects": deep_objects(),
        "deep-200": deep_arrays(200),
        "invalid-utf8": b'"\xff\xfe\xfd"',
        "overlong-utf8": b'"\xc0\xaf"',
        "lone-surrogate": b'"\\ud800"',
        "nul": b'"a\\u0000b"',
        "huge-int": b"1" + b"0" * 400,
        "huge-float": b"1e400",
        "nan": b"NaN",
        "truncated": b'{"a": [1, 2',
    }
    for label, method, path, wrap in targets:
        for kind, inner in bad_values.items():
            if label == "secret" and kind == "nul":
                continue  # a secret value is encrypted to bytes: NUL is a valid character there
            await expect(f"{label}/{kind}", method, path, wrap(inner))
        await expect(f"{label}/not-json", method, path, b"\xff\xfe not json at all \x00")
        await expect(f"{label}/empty", method, path, b"")
    for kind, inner in bad_values.items():
        body = b'{"x": ' + inner + b"}"
        await expect(f"hook/{kind}", "POST", f"/hooks/{sink['id']}", body, headers=hook_headers(body))
    for kind, body in {"invalid-utf8": b"\xff\xfe\xfd", "deep-bare": deep_arrays()}.items():
        await expect(f"hook/{kind}", "POST", f"/hooks/{sink['id']}", body, headers=hook_headers(body))

    # ---- a flood of badly signed webhooks: all 401, concurrently
    good = b'{"order": 1}'
    now = int(time.time())
    variants = [
        {"webhook-signature": "v1," + "A" * 44, "webhook-timestamp": str(now)},
        {"webhook-timestamp": str(now)},
        {"webhook-signature": sign_hook(secret, good)["webhook-signature"]},
        sign_hook(secret, good, now - 3600),  # a correct signature, too old
        {**sign_hook(secret, good), "webhook-timestamp": "yesterday"},
        {"webhook-signature": "md5=abc", "webhook-timestamp": str(now)},
        sign_hook("whsec_bm90LXRoZS1zZWNyZXQ=", good),
        {**sign_hook(secret, b'{"order": 2}')},  # signed for another body
        {**sign_hook(secret, good), "webhook-signature": "v1,@@@ v1 v2,x,y"},  # malformed list
    ]
    hook_url = f"{faults_api.url}/hooks/{sink['id']}"
    unknown_url = f"{faults_api.url}/hooks/{uuid.uuid4()}"
    codes: dict[int, int] = {}
    not_problem = 0
    flood = 400
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as anon:
        async def one(i: int):
            nonlocal not_problem
            headers = {"webhook-id": f"bad-{i}", **variants[i % len(variants)], "Content-Type": "application/json"}
            r = await anon.post(unknown_url if i % 10 == 9 else hook_url, content=good, headers=headers)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            not_problem += not is_problem(r)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(flood)))
        flood_s = time.perf_counter() - started
    assert codes == {401: flood}, codes
    assert not_problem == 0

    # ---- nothing half-written, and the service is still well
    after = await _counts(faults_db, project, wf_ids, failed_run)
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    deliveries = await faults_db.fetchval("select count(*) from runs where delivery_id like 'bad-%'")
    assert deliveries == 0
    assert (await http.get("/readyz")).status_code == 200
    assert faults_api.proc.p.poll() is None

    by_code: dict[int, int] = {}
    for _label, code in outcomes:
        by_code[code] = by_code.get(code, 0) + 1
    record("bad_input", requests=len(outcomes), status_codes=by_code, bad_signature_flood=flood,
           bad_signature_flood_s=round(flood_s, 2), huge_output_stored_bytes=row["size"],
           huge_output_original_bytes=row["output"]["size_bytes"], rows_written_by_rejected_requests=0)
