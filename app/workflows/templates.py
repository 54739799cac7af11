"""`{{ expr }}` templates: JMESPath expressions compiled once, rendered against a run's context
within the limits of app/workflows/expressions.py; rendered values are storable (app/storable.py)."""

from __future__ import annotations

import re
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError

from app.storable import storable_text, to_storable
from app.workflows.expressions import Budget, search

TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)
_compiled: dict[str, Any] = {}


class TemplateError(ValueError):
    pass


def compile_expression(expr: str):
    parsed = _compiled.get(expr)
    if parsed is None:
        try:
            parsed = jmespath.compile(expr)
        except JMESPathError as exc:
            raise TemplateError(f"invalid JMESPath expression {expr!r}: {str(exc).splitlines()[0]}") from None
        if len(_compiled) < 10_000:
            _compiled[expr] = parsed
    return parsed


def check_templates(value: Any, path: list[str | int]) -> list[tuple[list[str | int], str]]:
    """Every template problem inside a config value, with its location."""
    problems: list[tuple[list[str | int], str]] = []
    if isinstance(value, str):
        if "{{" in value:
            for m in TEMPLATE.finditer(value):
                if not m.group(1):
                    problems.append((path, "empty template"))
                    continue
                try:
                    compile_expression(m.group(1))
                except TemplateError as exc:
                    problems.append((path, str(exc)))
    elif isinstance(value, dict):
        for k, v in value.items():
            problems += check_templates(v, [*path, k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problems += check_templates(v, [*path, i])
    return problems


def uses_secrets(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value and "secrets" in value
    if isinstance(value, dict):
        return any(uses_secrets(v) for v in value.values())
    if isinstance(value, list):
        return any(uses_secrets(v) for v in value)
    return False


_SECRET_REF = re.compile(r'\bsecrets\s*\.\s*(?:([A-Za-z_][A-Za-z0-9_]*)|"([^"]+)")')


def referenced_secrets(value: Any) -> set[str]:
    """Names used as `secrets.NAME` inside templates, so a missing secret fails the step loudly."""
    names: set[str] = set()
    if isinstance(value, str):
        for m in TEMPLATE.finditer(value):
            names.update(a or b for a, b in _SECRET_REF.findall(m.group(1)))
    elif isinstance(value, dict):
        for v in value.values():
            names |= referenced_secrets(v)
    elif isinstance(value, list):
        for v in value:
            names |= referenced_secrets(v)
    return names


def evaluate(expr: str, context: dict, budget: Budget | None = None) -> Any:
    """The value of one JMESPath expression, within `budget` (a fresh one with the default limits).

    Raises ExpressionLimit over a limit, JMESPathError for an expression error. The value may
    hold text jsonb cannot store: pass it through `to_storable` before storing it."""
    return search(compile_expression(expr).parsed, context, budget or Budget())


def render(value: Any, context: dict, budget: Budget | None = None) -> Any:
    """`value` with every `{{ expr }}` replaced, all templates sharing one budget. Templated parts
    are made storable (NUL escaped, see app/storable.py), so the rendered value can be stored as is.

    Raises ExpressionLimit, Unstorable, or TemplateError (with a storable message) for an
    expression error."""
    return _render(value, context, budget or Budget())


def _evaluate_template(expr: str, context: dict, budget: Budget) -> Any:
    try:
        return evaluate(expr, context, budget)
    except JMESPathError as exc:
        # Type errors quote the offending value, which may hold NUL: the message must be storable.
        raise TemplateError(storable_text((str(exc).splitlines() or [type(exc).__name__])[0])) from None


def _render(value: Any, context: dict, budget: Budget) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        m = TEMPLATE.fullmatch(value.strip())
        if m and value.strip().count("{{") == 1:
            return to_storable(_evaluate_template(m.group(1), context, budget))

        def sub(match: re.Match) -> str:
            v = _evaluate_template(match.group(1), context, budget)
            if isinstance(v, str):
                return v
            if v is None:
                return ""
            return orjson.dumps(to_storable(v)).decode()

        # Each part was counted against the budget's result size by evaluate().
        return to_storable(TEMPLATE.sub(sub, value))
    if isinstance(value, dict):
        return {k: _render(v, context, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context, budget) for v in value]
    return value
