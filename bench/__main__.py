"""`python -m bench [--quick] [--output PATH] [--py-spy DIR]`: run the benchmark, print a
markdown table, write the results as JSON (bench/results.json by default)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from bench.runner import FULL, QUICK, run_bench
from bench.stats import fmt

HERE = Path(__file__).resolve().parent

# (key, label, DESIGN §8 target, floor key)
ROWS = [
    ("resume_c1_p50_ms", "resume, 1 client, p50 (ms)", "≤ 3", "floor_resume_c1_p50_ms", "floor_raw_c1_p50_ms"),
    ("resume_c1_p99_ms", "resume, 1 client, p99 (ms)", "≤ 8", "floor_resume_c1_p99_ms", "floor_raw_c1_p99_ms"),
    ("resume_p50_ms", "resume, 32 clients, p50 (ms)", "", "floor_resume_p50_ms", "floor_raw_p50_ms"),
    ("resume_p99_ms", "resume, 32 clients, p99 (ms)", "", "floor_resume_p99_ms", "floor_raw_p99_ms"),
    ("resumes_per_s", "resumes/s, 32 clients", "≥ 500", "floor_resumes_per_s", "floor_raw_per_s"),
    ("resume_worker_c1_p50_ms", "resume, 1 client, worker draining, p50 (ms)", "", None, None),
    ("resume_worker_c1_p99_ms", "resume, 1 client, worker draining, p99 (ms)", "", None, None),
    ("resume_worker_per_s", "resumes/s, 32 clients, worker draining", "", None, None),
    ("resume_deep_queue_c1_p50_ms", "resume, 1 client, deep queue, p50 (ms)", "", None, None),
    ("resume_deep_queue_c1_p99_ms", "resume, 1 client, deep queue, p99 (ms)", "", None, None),
    ("resume_grown_p50_ms", "resume, 1 client, grown database, p50 (ms)", "", None, None),
    ("resume_grown_p99_ms", "resume, 1 client, grown database, p99 (ms)", "", None, None),
    ("ratio_resume_grown_p50", "grown / small, p50", "≤ 1.25", None, None),
    ("ratio_resume_grown_p99", "grown / small, p99", "≤ 1.5", None, None),
    ("ratio_resume_c1_p99_to_floor_raw", "1 client p99 / raw floor p99", "≤ 1.5", None, None),
    ("runs_list_p50_ms", "GET /runs?project_id=&limit=50, p50 (ms)", "", None, None),
    ("runs_list_grown_p50_ms", "the same, grown database, p50 (ms)", "", None, None),
    ("resume_pooler_p50_ms", "resume through PgBouncer (transaction mode), 1 client, p50 (ms)", "", None, None),
    ("resume_10_steps_p99_ms", "resume 10 steps, 1 client, p99 (ms)", "", None, None),
    ("resume_100_steps_p99_ms", "resume 100 steps, 1 client, p99 (ms)", "", None, None),
    ("resume_1000_steps_p99_ms", "resume 1,000 steps, 1 client, p99 (ms)", "≤ 100", None, None),
    ("pickup_p50_ms", "pickup with LISTEN, p50 (ms)", "", None, None),
    ("pickup_p99_ms", "pickup with LISTEN, p99 (ms)", "≤ 5", None, None),
    ("pickup_poll_only_p99_ms", "pickup polling only, p99 (ms)", "≤ poll interval", None, None),
    ("bulk_resumes_per_s", "bulk resume, runs/s at max_per_second 1000", "≥ 300", None, None),
    ("worker_steps_per_s_1", "worker steps/s, 1 process", "≥ 1,000", None, None),
    ("worker_steps_per_s_2", "worker steps/s, 2 processes", "> 1 process", None, None),
    ("fair_pickup_p99_ms", "pickup while another tenant has 100 slow runs, p99 (ms)", "≤ 1,000", None, None),
]


def table(res: dict) -> str:
    lines = ["| metric | result | target (DESIGN §8) | met | floor (recorded SQL) | raw floor (superuser) |",
             "|---|---:|---|---|---:|---:|"]
    met = {k: v["met"] for k, v in (res.get("targets") or {}).items()}
    for key, label, target, floor, raw in ROWS:
        if key == "pickup_poll_only_p99_ms":
            target = f"≤ {res.get('pickup_poll_interval_s', '?')} s"
        ok = "" if key not in met else ("yes" if met[key] else "**no**")
        lines.append(f"| {label} | {fmt(res.get(key, float('nan')))} | {target} | {ok} | "
                     f"{fmt(res[floor]) if floor and floor in res else ''} | {fmt(res[raw]) if raw and raw in res else ''} |")
    m = res.get("machine", {})
    lines.append("")
    lines.append(f"ratios: resume p99 / floor p99 = {fmt(res.get('ratio_resume_p99_to_floor', float('nan')))}, "
                 f"1-client p50 / floor = {fmt(res.get('ratio_resume_c1_p50_to_floor', float('nan')))}, "
                 f"floor throughput / ours = {fmt(res.get('ratio_floor_to_resume_throughput', float('nan')))}")
    lines.append(f"PostgreSQL CPU per resume (ms): ours {fmt(res.get('resume_pg_cpu_ms_per_resume', float('nan')))}, "
                 f"recorded floor {fmt(res.get('floor_pg_cpu_ms_per_resume', float('nan')))}, "
                 f"raw floor {fmt(res.get('floor_raw_pg_cpu_ms_per_resume', float('nan')))} (32 clients); "
                 f"1 client: ours {fmt(res.get('resume_c1_pg_cpu_ms_per_resume', float('nan')))}, grown "
                 f"{fmt(res.get('resume_grown_pg_cpu_ms_per_resume', float('nan')))}, raw floor "
                 f"{fmt(res.get('floor_raw_c1_pg_cpu_ms_per_resume', float('nan')))}; "
                 f"API CPU per resume {fmt(res.get('resume_api_cpu_ms_per_resume', float('nan')))} ms")
    lines.append(f"pickup measured from the resume transaction's last write (its audit row) to the claim; "
                 f"from the HTTP response: p50 {fmt(res.get('pickup_from_response_p50_ms', float('nan')))} ms, "
                 f"p99 {fmt(res.get('pickup_from_response_p99_ms', float('nan')))} ms")
    lines.append(f"load generator CPU during the 32-client run: {res.get('resume_client_cpu_share', 0):.0%} of a core; "
                 f"API process: {res.get('resume_api_cpu_share', 0):.0%}; machine busy: "
                 f"{res.get('resume_machine_busy_share', 0):.0%}")
    lines.append(f"machine: {m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}, "
                 f"PostgreSQL {m.get('postgres')}, load average at start {m.get('loadavg_at_start')}; "
                 f"git {res.get('git_rev')}; mode {res.get('mode')}")
    errs = res.get("errors_logged") or {}
    if any(errs.values()):
        lines.append(f"**errors logged by the service/worker processes: {errs}** (see stderr)")
    if res.get("service_env"):
        lines.append(f"service environment overrides: {res['service_env']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sample sizes: seconds, for the test suite")
    ap.add_argument("--output", type=Path, default=None,
                    help="where to write the JSON (default bench/results.json; bench/results-quick.json with --quick)")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                    help="record py-spy stacks of the API (32-client phase) and of the workers into DIR")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the service and worker processes (repeatable), "
                         "e.g. MESHHOOK_DB_POOL_SIZE=32; recorded in the results")
    args = ap.parse_args(argv)
    extra = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--env wants NAME=VALUE, got {item!r}")
        extra[name] = value
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = args.output or HERE / ("results-quick.json" if args.quick else "results.json")
    started = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    res = asyncio.run(run_bench(QUICK if args.quick else FULL, log=log, py_spy=args.py_spy, extra_env=extra))
    res["mode"] = "quick" if args.quick else "full"
    res["duration_s"] = round(time.perf_counter() - started, 1)
    res["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
