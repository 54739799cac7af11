"""Helpers for engine tests: run a definition end to end, read events and step details."""
from __future__ import annotations

import uuid

from tests.conftest import Client


def uniq(prefix: str = "n") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def node(key: str, type_: str, config: dict | None = None) -> dict:
    return {"id": key, "data": {"type": type_, "config": config or {}}}


def edge(source: str, target: str, handle: str | None = None) -> dict:
    e = {"source": source, "target": target}
    if handle is not None:
        e["sourceHandle"] = handle
    return e


async def run_definition(client: Client, definition: dict, input: dict | None = None, timeout: float = 20,
                         project_id: str | None = None) -> dict:
    project_id = project_id or await client.project()
    wf = await client.workflow(project_id, definition)
    run_id = await client.start(wf["id"], input or {})
    return await client.wait(run_id, timeout=timeout)


async def events(client: Client, run_id: str) -> list[dict]:
    r = await client.get(f"/runs/{run_id}/events")
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def step_detail(client: Client, run_id: str, key: str) -> dict:
    r = await client.get(f"/runs/{run_id}/steps/{key}")
    assert r.status_code == 200, r.text
    return r.json()


FAST_RETRY = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
