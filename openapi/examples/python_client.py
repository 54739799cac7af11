"""Resume a failed run from its failed step, end to end, with httpx.

Creates a project and a workflow `webhook → http_call(<url>) → transform`, starts a run, waits
until it fails at the HTTP call, shows the resume plan, waits for you to fix the upstream service
(press Enter), resumes from the failed step and waits for the resumed run to succeed.

    python python_client.py --base-url http://127.0.0.1:8000 --token "$TOKEN" https://upstream.example/charge

With `--mark-succeeded '<json>'` it does not wait: it records that JSON as the failed step's output by hand
("mark succeeded", DESIGN §10.2), so the upstream is not called again and the rest of the run uses it.
`approve_once()` and `mark_succeeded()` below are the two operator actions as small functions.

With `--outage N` it recovers after an outage instead: N runs fail at the HTTP call; once you have
fixed the upstream service (Enter), one bulk resume previews (dry run), then resumes all of them at
`--rate` runs per second, following the job's progress until every resumed run has finished.

The base URL and token may also come from MESHHOOK_URL and MESHHOOK_TOKEN (`meshhook token --sub <uuid>`
mints a dev token). The last line printed is a JSON summary. Exit status: 0 when the resumed run
succeeded, 1 when it did not, 2 on an API error (its problem+json is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import httpx

FINAL = {"succeeded", "failed", "cancelled", "paused"}


class ApiError(Exception):
    def __init__(self, response: httpx.Response):
        try:
            self.problem = response.json()
        except ValueError:
            self.problem = {"status": response.status_code, "detail": response.text}
        super().__init__(f"{response.request.method} {response.request.url.path} → "
                         f"{self.problem.get('status')} {self.problem.get('title', '')}: {self.problem.get('detail')}")


def call(client: httpx.Client, method: str, path: str, expected: int, **kwargs) -> dict:
    response = client.request(method, path, **kwargs)
    if response.status_code != expected:
        raise ApiError(response)
    return response.json()


def wait_for_run(client: httpx.Client, run_id: str, timeout_s: float) -> dict:
    """Poll GET /runs/{run_id} until the run stops (or give up after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        run = call(client, "GET", f"/runs/{run_id}", 200)
        if run["status"] in FINAL or time.monotonic() > deadline:
            return run
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def approve_once(client: httpx.Client, run_id: str, pause_step: str, reason: str) -> str:
    """Continue a paused run from its pause step, at most once. A second approval (a double click, another
    operator, a retry) never runs the downstream steps twice: the server answers 409 with `resolved_by`
    (approved and finished) or `active_run_id` (approved, still running); return that run instead."""
    response = client.post(f"/runs/{run_id}/resume", json={"from_step": pause_step, "reason": reason},
                           headers={"Idempotency-Key": f"approve:{run_id}:{pause_step}"})
    if response.status_code == 202:
        return response.json()["id"]
    if response.status_code == 409:
        problem = response.json()
        existing = problem.get("resolved_by") or problem.get("active_run_id")
        if existing:
            return existing
    raise ApiError(response)


def mark_succeeded(client: httpx.Client, run_id: str, step: str, output: object, reason: str) -> dict:
    """The step's work was done by hand (say, a payment taken by phone): record its output without calling
    the upstream again, and let the rest of the run continue with it. Returns the new run (202 body)."""
    body = {"from_step": step, "outputs": {step: output}, "reason": reason}
    plan = call(client, "POST", f"/runs/{run_id}/resume-plan", 200, json=body)
    print(f"marking {plan['override']} succeeded; re-executing {plan['rerun']}; reusing {plan['reuse']}")
    return call(client, "POST", f"/runs/{run_id}/resume", 202, json=body,
                headers={"Idempotency-Key": f"mark:{run_id}:{step}"})


def recover_after_outage(client: httpx.Client, project_id: str, workflow_id: str, failed_step: str, reason: str,
                         rate: int, timeout_s: float) -> dict:
    """One bulk resume of every run of the workflow that failed at `failed_step`: a dry run first
    (what would happen to each run), then the job itself, followed until it has finished."""
    body = {"filter": {"workflow_id": workflow_id, "status": ["failed"], "failed_step": failed_step},
            "reason": reason, "max_per_second": rate}
    preview = call(client, "POST", f"/projects/{project_id}/bulk-resumes", 200, json={**body, "dry_run": True})
    print(f"dry run: {preview['matched']} runs match; {preview['accepted']} would be resumed, "
          f"{preview['skipped']} skipped, {preview['rejected']} rejected")
    # The key makes a retried request (a timeout, a double click) return the same job, never a second one.
    job = call(client, "POST", f"/projects/{project_id}/bulk-resumes", 202, json=body,
               headers={"Idempotency-Key": f"outage:{workflow_id}:{failed_step}"})
    print(f"bulk resume {job['id']} started")
    deadline = time.monotonic() + timeout_s
    while job["finished_at"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        job = call(client, "GET", f"/bulk-resumes/{job['id']}", 200)
        print(f"  {job['accepted']} resumed, {job['skipped']} skipped, {job['rejected']} rejected, "
              f"{job['pending']} pending")
    for item in job["items"]:
        if item["outcome"] != "accepted":
            print(f"  run {item['run_id']}: {item['outcome']} ({item['why']})")
    return job


def definition(url: str) -> dict:
    return {
        "nodes": [
            {"id": "start", "data": {"type": "webhook"}},
            {"id": "charge", "data": {"type": "http_call", "config": {
                "method": "POST", "url": url, "body": {"amount": "{{ input.amount }}"},
                "retry": {"max_attempts": 1}}}},
            {"id": "summary", "data": {"type": "transform", "config": {
                "expression": "{amount: input.amount, upstream_status: steps.charge.status}"}}},
        ],
        "edges": [{"source": "start", "target": "charge"}, {"source": "charge", "target": "summary"}],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the upstream URL the http_call step calls (it should fail at first)")
    parser.add_argument("--base-url", default=os.environ.get("MESHHOOK_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("MESHHOOK_TOKEN"))
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each run")
    parser.add_argument("--mark-succeeded", metavar="JSON", type=json.loads, default=None,
                        help="record this output for the failed step instead of calling the upstream again")
    parser.add_argument("--outage", type=int, default=0, metavar="N",
                        help="start N runs and recover them all with one bulk resume")
    parser.add_argument("--rate", type=int, default=20, help="bulk resume: runs resumed per second (1-1000)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is required: --token or MESHHOOK_TOKEN")

    headers = {"Authorization": f"Bearer {args.token}"}
    if args.outage:
        return outage_main(args, headers)
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client:
        try:
            project = call(client, "POST", "/projects", 201, json={"name": "resume example"})
            workflow = call(client, "POST", f"/projects/{project['id']}/workflows", 201, json={
                "slug": f"charge-{uuid.uuid4().hex[:8]}", "name": "Charge", "definition": definition(args.url)})
            run = call(client, "POST", f"/workflows/{workflow['id']}/runs", 202, json={"input": {"amount": 42}})
            print(f"started run {run['id']}")

            run = wait_for_run(client, run["id"], args.timeout)
            if run["status"] != "failed":
                print(f"expected the run to fail at the upstream call, but it is {run['status']}")
                return 1
            step = next(s for s in run["steps"] if s["eligible_for_resume"])
            print(f"run {run['id']} failed at step {step['key']!r}: {step['error']}")

            plan = call(client, "GET", f"/runs/{run['id']}/resume-plan", 200, params={"from_step": step["key"]})
            print(f"a resume from {plan['from_step']!r} reuses {plan['reuse']} and re-executes {plan['rerun']}")

            if args.mark_succeeded is not None:
                resumed = mark_succeeded(client, run["id"], step["key"], args.mark_succeeded, "done by hand")
            else:
                print("fix the upstream service, then press Enter to resume", flush=True)
                sys.stdin.readline()
                resumed = call(client, "POST", f"/runs/{run['id']}/resume", 202,
                               json={"from_step": step["key"], "reason": "upstream fixed"},
                               headers={"Idempotency-Key": f"{run['id']}:{step['key']}"})
            print(f"resumed as run {resumed['id']}")
            resumed = wait_for_run(client, resumed["id"], args.timeout)
        except ApiError as exc:
            print(exc, file=sys.stderr)
            print(json.dumps(exc.problem), file=sys.stderr)
            return 2

    steps = {s["key"]: s for s in resumed["steps"]}
    print(json.dumps({"run_id": run["id"], "resumed_run_id": resumed["id"], "status": resumed["status"],
                      "reused": [k for k, s in steps.items() if s["reused_from"]],
                      "output": steps["summary"]["output"]}))
    return 0 if resumed["status"] == "succeeded" else 1


def outage_main(args: argparse.Namespace, headers: dict) -> int:
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=30) as client:
        try:
            project = call(client, "POST", "/projects", 201, json={"name": "outage example"})
            workflow = call(client, "POST", f"/projects/{project['id']}/workflows", 201, json={
                "slug": f"charge-{uuid.uuid4().hex[:8]}", "name": "Charge", "definition": definition(args.url)})
            runs = [call(client, "POST", f"/workflows/{workflow['id']}/runs", 202, json={"input": {"amount": i}})["id"]
                    for i in range(args.outage)]
            statuses = [wait_for_run(client, run_id, args.timeout)["status"] for run_id in runs]
            print(f"{statuses.count('failed')} of {len(runs)} runs failed at step 'charge'")
            print("fix the upstream service, then press Enter to resume them all", flush=True)
            sys.stdin.readline()
            job = recover_after_outage(client, project["id"], workflow["id"], "charge", "upstream fixed",
                                       args.rate, args.timeout)
            new_runs = [i["new_run_id"] for i in job["items"] if i["new_run_id"]]
            final = [wait_for_run(client, run_id, args.timeout)["status"] for run_id in new_runs]
        except ApiError as exc:
            print(exc, file=sys.stderr)
            print(json.dumps(exc.problem), file=sys.stderr)
            return 2
    print(json.dumps({"bulk_id": job["id"], "status": job["status"], "matched": job["matched"],
                      "accepted": job["accepted"], "runs": runs, "resumed_runs": new_runs,
                      "succeeded": final.count("succeeded")}))
    return 0 if job["status"] == "succeeded" and final.count("succeeded") == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
