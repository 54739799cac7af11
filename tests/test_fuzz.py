"""Schemathesis against the live service, every operation, time-boxed (~90 s): no 5xx, responses
(status, content type, headers, body) conform to the spec — problem+json for every error — and
schema-violating requests are rejected.

The fuzzer acts as the owner of a seeded project whose workflow has a failed run, and path
parameters are drawn from those real ids most of the time (random ones the rest), so the deep
paths (resume, plan, steps, events, cancel, pause) are exercised, not only their 404s. Webhook
deliveries to the seeded workflow are signed by tests/fuzz_hooks.py.

Not checked: `positive_data_acceptance`, which expects every schema-valid request to succeed. The
contract answers some schema-valid requests with 422 on purpose: an unknown `from_step`, a workflow
version that does not exist, a definition whose edges name missing nodes, a cursor the server
did not issue.

Select with `-m fuzz`; MESHHOOK_FUZZ_SECONDS and MESHHOOK_FUZZ_SEED override the budget and seed.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import linear
from tests.support import ROOT

pytestmark = pytest.mark.fuzz

SECONDS = int(os.environ.get("MESHHOOK_FUZZ_SECONDS", "90"))
SEED = int(os.environ.get("MESHHOOK_FUZZ_SEED", "20261126"))
CHECKS_EXCLUDED = "positive_data_acceptance"


def _config(base_url: str, token: str, ids: dict[str, list[str]]) -> str:
    def values(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(v) for v in items) + "]"

    return f"""
base-url = {json.dumps(base_url)}
headers = {{ Authorization = {json.dumps("Bearer " + token)} }}
# One worker: Python 3.11's ast.parse is not thread-safe, and hypothesis calls it while generating.
workers = 1
seed = {SEED}

[generation]
max-examples = 50

[parameters]
"path.run_id" = {{ dictionary = "run_ids", probability = 0.7 }}
"path.project_id" = {{ dictionary = "project_ids", probability = 0.7 }}
"path.workflow_id" = {{ dictionary = "workflow_ids", probability = 0.7 }}
"path.step_key" = {{ dictionary = "step_keys", probability = 0.7 }}
"query.from_step" = {{ dictionary = "step_keys", probability = 0.6 }}
"body.from_step" = {{ dictionary = "step_keys", probability = 0.6 }}
"query.run_id" = {{ dictionary = "run_ids", probability = 0.5 }}
"query.project_id" = {{ dictionary = "project_ids", probability = 0.5 }}
"query.workflow_id" = {{ dictionary = "workflow_ids", probability = 0.5 }}
"path.bulk_id" = {{ dictionary = "bulk_ids", probability = 0.7 }}

[dictionaries.run_ids]
values = {values(ids["run"])}
[dictionaries.project_ids]
values = {values(ids["project"])}
[dictionaries.workflow_ids]
values = {values(ids["workflow"])}
[dictionaries.step_keys]
values = {values(ids["step"])}
[dictionaries.bulk_ids]
values = {values(ids["bulk"])}
"""


async def test_schemathesis_finds_nothing(service, world, make_client, db, tmp_path: Path):
    owner = make_client()
    project = await owner.project("fuzzed")
    gate = f"fuzz-{uuid.uuid4().hex[:8]}"
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"method": "GET", "url": f"{world.url}/gate/{gate}", "retry": {"max_attempts": 1}}),
        ("shape", "transform", {"expression": "steps.call.body"})))
    failed = await owner.start(wf["id"], {"n": 1})
    run = await owner.wait(failed)
    assert run["status"] == "failed"
    # A bulk resume to read and cancel; it matches no run, so the audit rows below are the fuzzer's own.
    bulk = await owner.post(f"/projects/{project}/bulk-resumes", {
        "filter": {"workflow_id": wf["id"], "status": ["succeeded"]}, "reason": "fuzz", "max_per_second": 1})
    assert bulk.status_code == 202, bulk.text
    ids = {"run": [failed], "project": [project], "workflow": [wf["id"]], "step": ["start", "call", "shape"],
           "bulk": [bulk.json()["id"]]}

    log_start = Path(service.log).stat().st_size
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(service.url, owner.token, ids))
    report = tmp_path / "report.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT),
           "MESHHOOK_FUZZ_WEBHOOK_SECRET": wf["webhook_secret"]}
    st = Path(sys.executable).with_name("st")
    proc = await asyncio.create_subprocess_exec(
        str(st), "--config-file", str(config), "run", f"{service.url}/openapi.json",
        "--checks", "all", "--exclude-checks", CHECKS_EXCLUDED, "--max-time", str(SECONDS),
        "--report", "json", "--report-json-path", str(report), "--output-truncate", "false",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), SECONDS + 300)
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    assert report.exists(), text[-5000:]
    result = json.loads(report.read_text())
    cases = result["test_cases"]["generated"]
    print(f"\nschemathesis: {cases} cases in {result['running_time']:.0f} s, seed {result['seed']}")

    assert result["failures"] == [] and result["errors"] == [], text[-20000:]
    assert proc.returncode == 0, text[-20000:]
    assert result["operations"]["tested"] == result["operations"]["total"], result["operations"]
    assert cases >= 500, f"only {cases} cases ran:\n{text[-5000:]}"

    # The fuzzer reached the real run: resume attempts on it were audited, and it resumed at least once.
    outcomes = {r["outcome"] for r in await db.fetch(
        "select outcome from audit_log where action = 'run.resume' and run_id = $1", uuid.UUID(failed))}
    assert {"accepted", "rejected"} <= outcomes, outcomes
    # ...and signed webhook deliveries reached the seeded workflow.
    assert await db.fetchval("select count(*) from runs where workflow_id = $1 and trigger = 'webhook'",
                             uuid.UUID(wf["id"])) > 0
    with open(service.log, "rb") as log:
        log.seek(log_start)
        assert b"unhandled error" not in log.read()
