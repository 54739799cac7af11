"""Prometheus metrics of the API and the engine."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RESUME_TOTAL = Counter("meshhook_resume_total", "Resume attempts by outcome", ["outcome"])
RESUME_SECONDS = Histogram(
    "meshhook_resume_seconds",
    "Latency of POST /runs/{id}/resume by outcome",
    ["outcome"],
    buckets=(0.001, 0.002, 0.003, 0.005, 0.008, 0.013, 0.021, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HTTP_REQUESTS = Counter("meshhook_http_requests_total", "HTTP requests", ["method", "status"])
RUNS_CLAIMED = Counter("meshhook_runs_claimed_total", "Runs claimed by this worker")
RUNS_FINISHED = Counter("meshhook_runs_finished_total", "Runs that reached a final or parked status", ["status"])
STEPS_FINISHED = Counter("meshhook_steps_finished_total", "Steps that reached a final status", ["type", "status"])
STEP_SECONDS = Histogram(
    "meshhook_step_seconds",
    "Step execution time",
    ["type"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
PRUNED_ROWS = Counter("meshhook_pruned_rows_total", "Rows deleted by retention", ["table"])
