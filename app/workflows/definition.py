"""Parse and validate the editor's `{nodes, edges}` format into a DAG (DESIGN §4).

Validation collects every problem with its location instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from app.workflows.templates import check_templates

STEP_TYPES = ("webhook", "http_call", "transform", "branch", "delay", "pause", "terminate")
ALIASES = {"httpCall": "http_call", "http-call": "http_call", "httpcall": "http_call"}
PURE_TYPES = frozenset({"webhook", "transform", "branch", "terminate", "pause"})
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
MAX_NODES = 2000
# Every key must be addressable as one URL path segment (GET /runs/{id}/steps/{step_key}), DESIGN §9.5.
# Checked when a definition is written, not when a stored one is read (older versions keep running).
STEP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
STEP_KEY_RULE = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


@dataclass(frozen=True)
class Step:
    key: str
    type: str
    config: dict[str, Any]
    position: int
    fingerprint: str  # type + config; a changed fingerprint means the step changed


@dataclass
class Dag:
    steps: dict[str, Step]
    order: list[str]  # topological
    parents: dict[str, list[tuple[str, str | None]]]  # key -> [(parent key, branch handle)]
    children: dict[str, list[tuple[str, str | None]]]
    _ancestors: dict[str, frozenset[str]] = field(default_factory=dict)
    _descendants: dict[str, frozenset[str]] = field(default_factory=dict)

    @staticmethod
    def _reach(start: str, edges: dict[str, list[tuple[str, str | None]]]) -> frozenset[str]:
        # Iterative: a linear chain of MAX_NODES steps is deeper than Python's recursion limit.
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt, _ in edges[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)

    def ancestors(self, key: str) -> frozenset[str]:
        got = self._ancestors.get(key)
        if got is None:
            got = self._ancestors[key] = self._reach(key, self.parents)
        return got

    def descendants(self, key: str) -> frozenset[str]:
        got = self._descendants.get(key)
        if got is None:
            got = self._descendants[key] = self._reach(key, self.children)
        return got

    def lineage_signature(self, key: str) -> str:
        """A step's own fingerprint plus its incoming edges: what "config or ancestry" means."""
        parts = [self.steps[key].fingerprint] + sorted(f"{p}:{h}" for p, h in self.parents[key])
        return "|".join(parts)


class DefinitionInvalid(Exception):
    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__(f"{len(errors)} problem(s) in the workflow definition")
        self.errors = errors


def _err(errors: list, loc: list, msg: str, node: str | None = None, field_: str | None = None) -> None:
    item: dict[str, Any] = {"loc": ["body", "definition", *loc], "msg": msg}
    if node is not None:
        item["node"] = node
    if field_ is not None:
        item["field"] = field_
    errors.append(item)


def step_key_errors(definition: Any) -> list[dict[str, Any]]:
    """One error per node id that is a string of 1..100 characters but not a valid step key
    (other malformed ids are reported by parse_definition)."""
    errors: list[dict[str, Any]] = []
    nodes = definition.get("nodes") if isinstance(definition, dict) else None
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        key = node.get("id") if isinstance(node, dict) else None
        if isinstance(key, str) and 0 < len(key) <= 100 and not STEP_KEY.fullmatch(key):
            _err(errors, ["nodes", i, "id"], f"step key {key!r} must match {STEP_KEY_RULE}", key, "id")
    return errors


def _num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_config(typ: str, cfg: dict, loc: list, node: str, errors: list) -> None:
    def bad(fld: str, msg: str) -> None:
        _err(errors, [*loc, fld], msg, node, fld)

    allowed: set[str]
    if typ == "http_call":
        allowed = {"method", "url", "headers", "query", "body", "timeout_s", "retry"}
        method = cfg.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            bad("method", f"must be one of {sorted(HTTP_METHODS)}")
        url = cfg.get("url")
        if not isinstance(url, str) or not url:
            bad("url", "is required and must be a string")
        elif "{{" not in url and not url.startswith(("http://", "https://")):
            bad("url", "must be an http:// or https:// URL")
        for fld in ("headers", "query"):
            if fld in cfg and not (
                isinstance(cfg[fld], dict) and all(isinstance(v, (str, int, float)) for v in cfg[fld].values())
            ):
                bad(fld, "must be an object of string values")
        t = cfg.get("timeout_s", 30)
        if not _num(t) or not 0 < t <= 300:
            bad("timeout_s", "must be a number in (0, 300]")
        retry = cfg.get("retry", {})
        if not isinstance(retry, dict):
            bad("retry", "must be an object")
        else:
            extra = set(retry) - {"max_attempts", "backoff_s", "max_backoff_s"}
            if extra:
                bad("retry", f"unknown fields {sorted(extra)}")
            ma = retry.get("max_attempts", 3)
            if not isinstance(ma, int) or isinstance(ma, bool) or not 1 <= ma <= 10:
                bad("retry", "max_attempts must be an integer in [1, 10]")
            for f2, hi in (("backoff_s", 3600), ("max_backoff_s", 3600)):
                v = retry.get(f2, 1)
                if not _num(v) or not 0 <= v <= hi:
                    bad("retry", f"{f2} must be a number in [0, {hi}]")
    elif typ == "transform":
        allowed = {"expression"}
        text = cfg.get("expression")
        if not isinstance(text, str) or not text.strip():
            bad("expression", "is required and must be a JMESPath expression")
    elif typ == "branch":
        allowed = {"condition"}
        text = cfg.get("condition")
        if not isinstance(text, str) or not text.strip():
            bad("condition", "is required and must be a JMESPath expression")
    elif typ == "delay":
        allowed = {"seconds"}
        s = cfg.get("seconds")
        if not _num(s) or not 0 <= s <= 30 * 86400:
            bad("seconds", "is required: a number of seconds in [0, 2592000]")
    elif typ == "terminate":
        allowed = {"status", "message"}
        if cfg.get("status") not in ("succeeded", "failed"):
            bad("status", "must be 'succeeded' or 'failed'")
        if "message" in cfg and not isinstance(cfg["message"], str):
            bad("message", "must be a string")
    elif typ == "pause":
        allowed = {"message"}
    else:  # webhook
        allowed = set(cfg)
    for extra in sorted(set(cfg) - allowed):
        bad(extra, "unknown field")
    for sub_loc, msg in check_templates(cfg, []):
        template_field = str(sub_loc[0]) if sub_loc else None
        _err(errors, [*loc, *sub_loc], msg, node, template_field)
    if typ in ("transform",) and isinstance(cfg.get("expression"), str):
        from app.workflows.templates import TemplateError, compile_expression

        try:
            compile_expression(cfg["expression"])
        except TemplateError as exc:
            bad("expression", str(exc))
    if typ == "branch" and isinstance(cfg.get("condition"), str):
        from app.workflows.templates import TemplateError, compile_expression

        try:
            compile_expression(cfg["condition"])
        except TemplateError as exc:
            bad("condition", str(exc))


def parse_definition(definition: Any) -> Dag:
    errors: list[dict[str, Any]] = []
    if not isinstance(definition, dict):
        raise DefinitionInvalid([{"loc": ["body", "definition"], "msg": "must be an object with nodes and edges"}])
    nodes = definition.get("nodes")
    edges = definition.get("edges", [])
    if not isinstance(nodes, list) or not nodes:
        _err(errors, ["nodes"], "must be a non-empty list")
        nodes = []
    if len(nodes) > MAX_NODES:
        _err(errors, ["nodes"], f"at most {MAX_NODES} nodes")
        nodes = []
    if not isinstance(edges, list):
        _err(errors, ["edges"], "must be a list")
        edges = []
    steps: dict[str, Step] = {}
    seen_ids: set[str] = set()  # every id, valid node or not, so a duplicate is reported either way
    for i, node in enumerate(nodes):
        loc = ["nodes", i]
        if not isinstance(node, dict):
            _err(errors, loc, "must be an object")
            continue
        key = node.get("id")
        if not isinstance(key, str) or not key or len(key) > 100:
            _err(errors, [*loc, "id"], "must be a non-empty string of at most 100 characters", field_="id")
            continue
        if key in seen_ids:
            _err(errors, [*loc, "id"], f"duplicate node id {key!r}", key, "id")
            continue
        seen_ids.add(key)
        data = node.get("data", {})
        if not isinstance(data, dict):
            _err(errors, [*loc, "data"], "must be an object", key, "data")
            continue
        typ = data.get("type", node.get("type"))
        typ = ALIASES.get(typ, typ) if isinstance(typ, str) else typ
        if typ not in STEP_TYPES:
            _err(
                errors,
                [*loc, "data", "type"],
                f"unknown step type {typ!r}; expected one of {list(STEP_TYPES)}",
                key,
                "type",
            )
            continue
        cfg = data.get("config", {})
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            _err(errors, [*loc, "data", "config"], "must be an object", key, "config")
            continue
        n_before = len(errors)
        _check_config(typ, cfg, [*loc, "data", "config"], key, errors)
        if len(errors) > n_before:
            continue
        fp = hashlib.sha256(orjson.dumps({"t": typ, "c": cfg}, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
        steps[key] = Step(key, typ, cfg, i, fp)

    all_ids = {n.get("id") for n in nodes if isinstance(n, dict) and isinstance(n.get("id"), str)}
    parents: dict[str, list[tuple[str, str | None]]] = {k: [] for k in steps}
    children: dict[str, list[tuple[str, str | None]]] = {k: [] for k in steps}
    seen_edges: set[tuple] = set()
    for j, edge in enumerate(edges):
        loc = ["edges", j]
        if not isinstance(edge, dict):
            _err(errors, loc, "must be an object")
            continue
        src, dst = edge.get("source"), edge.get("target")
        handle = edge.get("sourceHandle")
        ok = True
        for fld, v in (("source", src), ("target", dst)):
            if not isinstance(v, str) or v not in all_ids:
                _err(errors, [*loc, fld], f"{fld} {v!r} is not a node id", field_=fld)
                ok = False
        if not ok or src not in steps or dst not in steps:
            continue
        if src == dst:
            _err(errors, loc, "an edge cannot connect a node to itself", src)
            continue
        if steps[src].type == "branch":
            if handle not in ("true", "false"):
                _err(
                    errors,
                    [*loc, "sourceHandle"],
                    "edges leaving a branch need sourceHandle 'true' or 'false'",
                    src,
                    "sourceHandle",
                )
                continue
        else:
            handle = None
        if (src, dst, handle) in seen_edges:
            continue
        seen_edges.add((src, dst, handle))
        parents[dst].append((src, handle))
        children[src].append((dst, handle))

    # Topological order (Kahn), stable by node position; leftovers are on a cycle.
    indeg = {k: len(parents[k]) for k in steps}
    ready = sorted((k for k, d in indeg.items() if d == 0), key=lambda k: steps[k].position)
    order: list[str] = []
    import heapq

    heap = [(steps[k].position, k) for k in ready]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        order.append(k)
        for c, _ in children[k]:
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(heap, (steps[c].position, c))
    if steps and len(order) < len(steps):
        cyc = sorted(k for k in steps if k not in order)
        _err(errors, ["edges"], f"the graph has a cycle through {cyc}")
    for k, st in steps.items():
        if st.type == "webhook" and parents[k]:
            _err(errors, ["nodes", st.position], "a webhook step is an entry point and cannot have incoming edges", k)
    if errors:
        raise DefinitionInvalid(errors)
    return Dag(steps=steps, order=order, parents=parents, children=children)
