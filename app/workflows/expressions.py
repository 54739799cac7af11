"""Bounded JMESPath evaluation: every expression and template runs against a budget of interpreter
work, wall time and result size, so a hostile expression fails (`expression_limit`) in a fraction
of a second instead of freezing the event loop it shares with the API.

Sizes are *logical*: what the value would take once serialized. JMESPath shares sub-objects
(`[@, @]` holds one object twice), so `input.v | [@,@] | [@,@] …` is tiny in memory but expands
2x per stage when serialized; sizes are computed per distinct object (memoized by id), never by
expanding. Functions that would expand a value (`to_string`, `join`, comparisons, `contains`,
`sort`) are charged what they would cost before they run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jmespath import functions
from jmespath.visitor import Options, TreeInterpreter

_TIME_CHECK_EVERY = 256  # visits between two clock reads (a clock read costs about one visit)
_MAX_MEASURE_DEPTH = 256  # values nesting deeper are refused (jsonb/orjson refuse them anyway)


class ExpressionLimit(Exception):
    """An expression or template went over one of its limits; the step fails with this type."""

    error_type = "expression_limit"


@dataclass(frozen=True)
class Limits:
    max_steps: int = 250_000  # interpreter nodes visited + elements produced (+ function work)
    max_seconds: float = 0.2  # wall time of one evaluation (one whole render for templates)
    max_result_bytes: int = 4 * 1024 * 1024  # logical serialized size of a result / rendered value


@lru_cache(maxsize=1)
def default_limits() -> Limits:
    """The limits from the service settings (MESHHOOK_EXPRESSION_*), read once."""
    from app.settings import get_settings

    s = get_settings()
    return Limits(s.expression_max_steps, s.expression_timeout_s, s.expression_max_result_bytes)


def _scalar_size(value: Any) -> int:
    if isinstance(value, str):
        # isascii() is O(1) in CPython; only non-ASCII text pays for an encode.
        return len(value) + 2 if value.isascii() else len(value.encode("utf-8", "surrogatepass")) + 2
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    return 24  # floats and anything else: an upper bound of repr()


class Budget:
    """Work, time and size accounting for one evaluation (or one render of many templates)."""

    __slots__ = ("_interpreter", "_sizes", "deadline", "limits", "result_bytes", "steps")

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or default_limits()
        self.steps = 0
        self.deadline = time.perf_counter() + self.limits.max_seconds
        self.result_bytes = 0
        # id -> (object, bytes, nodes); the object is kept so that its id cannot be reused meanwhile.
        self._sizes: dict[int, tuple[Any, int, int]] = {}
        self._interpreter: BoundedInterpreter | None = None

    def charge(self, units: int) -> None:
        self.steps += units
        self.tick()

    def tick(self) -> None:
        if self.steps > self.limits.max_steps:
            raise ExpressionLimit(f"expression exceeded {self.limits.max_steps:,} evaluation steps")
        if time.perf_counter() > self.deadline:
            raise ExpressionLimit(f"expression exceeded {self.limits.max_seconds:g} s")

    def measure(self, value: Any) -> tuple[int, int]:
        """(serialized bytes, nodes) of `value` as if fully expanded, in time linear in the number
        of distinct objects."""
        if isinstance(value, (list, dict)):
            return self._measure(value, 0)
        return _scalar_size(value), 1

    def _measure(self, value: Any, depth: int) -> tuple[int, int]:
        known = self._sizes.get(id(value))
        if known is not None:
            return known[1], known[2]
        if depth > _MAX_MEASURE_DEPTH:
            raise ExpressionLimit(f"value nests deeper than {_MAX_MEASURE_DEPTH} levels")
        # [ ] or { } and the commas; for objects also the quoted keys and colons.
        size, nodes = 1 + max(len(value), 1), 1
        items = value if isinstance(value, list) else value.values()
        if isinstance(value, dict):
            for k in value:
                size += len(k) + 3 if isinstance(k, str) and k.isascii() else _scalar_size(k) + 1
        for item in items:
            if isinstance(item, (list, dict)):
                s, n = self._measure(item, depth + 1)
                size += s
                nodes += n
            else:
                size += _scalar_size(item)
                nodes += 1
        self._sizes[id(value)] = (value, size, nodes)
        return size, nodes

    def check_result(self, value: Any) -> None:
        """Count `value` against the result size limit (cumulative over one render)."""
        size = self.measure(value)[0]
        self.result_bytes += size
        if self.result_bytes > self.limits.max_result_bytes:
            raise ExpressionLimit(
                f"expression result of {self.result_bytes:,} bytes exceeds the limit of "
                f"{self.limits.max_result_bytes:,} bytes"
            )

    def interpreter(self) -> BoundedInterpreter:
        if self._interpreter is None:
            self._interpreter = BoundedInterpreter(self)
        return self._interpreter


def search(parsed_ast: dict, data: Any, budget: Budget) -> Any:
    """Evaluate a compiled JMESPath AST (`ParsedResult.parsed`) within `budget`.

    Raises ExpressionLimit when over a limit, JMESPathError for ordinary expression errors."""
    try:
        result = budget.interpreter().visit(parsed_ast, data)
    except RecursionError:
        raise ExpressionLimit("expression nests too deeply") from None
    budget.check_result(result)
    return result


# ---------------------------------------------------------------- the interpreter
class BoundedFunctions(functions.Functions):
    """JMESPath's built-in functions, each charged its cost before it runs."""

    def __init__(self, budget: Budget):
        self.budget = budget

    def call_function(self, function_name: str, resolved_args: list) -> Any:
        b = self.budget
        units = 1
        if function_name not in _CONSTANT_TIME:
            # Argument type checks walk typed arrays element by element; the functions are linear too.
            for arg in resolved_args:
                if isinstance(arg, (list, dict)):
                    units += len(arg)
                elif isinstance(arg, str):
                    units += len(arg) >> 6
        b.charge(units)
        extra = _EXTRA_COST.get(function_name)
        if extra is not None:
            extra(b, resolved_args)
        return super().call_function(function_name, resolved_args)


def _cost_sort(b: Budget, args: list) -> None:
    array = args[0]
    if isinstance(array, list) and len(array) > 1:
        b.charge(int(len(array) * math.log2(len(array))))


def _charge_output(b: Budget, function: str, size: int) -> None:
    """A function about to build `size` bytes of text: refused over the result limit, else charged."""
    if size > b.limits.max_result_bytes:
        raise ExpressionLimit(
            f"{function}() would produce {size:,} bytes, over the limit of {b.limits.max_result_bytes:,} bytes"
        )
    b.charge(size >> 5)


def _cost_to_string(b: Budget, args: list) -> None:
    value = args[0]
    if not isinstance(value, str):
        _charge_output(b, "to_string", b.measure(value)[0])


def _cost_join(b: Budget, args: list) -> None:
    sep, array = args
    if isinstance(sep, str) and isinstance(array, list) and all(isinstance(s, str) for s in array):
        _charge_output(b, "join", sum(map(len, array)) + len(sep) * max(len(array) - 1, 0))


def _cost_contains(b: Budget, args: list) -> None:
    subject, search_ = args
    if isinstance(subject, list):
        # `in` compares element by element without memoizing shared sub-objects.
        b.charge(min(b.measure(subject)[1], len(subject) * b.measure(search_)[1]))


def _cost_merge(b: Budget, args: list) -> None:
    b.charge(sum(len(a) for a in args if isinstance(a, dict)))


# Functions whose work does not grow with their arguments (their signatures check only the top type).
_CONSTANT_TIME = frozenset({"abs", "ceil", "floor", "length", "not_null", "to_array", "type"})
_EXTRA_COST: dict[str, Callable[[Budget, list], None]] = {
    "sort": _cost_sort,
    "sort_by": _cost_sort,
    "to_string": _cost_to_string,
    "join": _cost_join,
    "contains": _cost_contains,
    "merge": _cost_merge,
}


class BoundedInterpreter(TreeInterpreter):
    """jmespath's TreeInterpreter, counting every node visited and every element produced."""

    def __init__(self, budget: Budget):
        # TreeInterpreter.__init__ is skipped on purpose: it builds Options/Functions each time (~3 µs).
        self._dict_cls = self.MAP_TYPE
        self._options = _OPTIONS
        self._functions = BoundedFunctions(budget)
        self.budget = budget

    def visit(self, node: dict, *args: Any, **kwargs: Any) -> Any:
        budget = self.budget
        budget.steps += 1
        if not budget.steps % _TIME_CHECK_EVERY:
            budget.tick()
        method = _DISPATCH.get(node["type"])
        if method is None:
            return self.default_visit(node, *args, **kwargs)
        return method(self, node, *args, **kwargs)

    def visit_comparator(self, node: dict, value: Any) -> Any:
        if node["value"] in self._EQUALITY_OPS:
            left = self.visit(node["children"][0], value)
            right = self.visit(node["children"][1], value)
            if isinstance(left, (list, dict)) and isinstance(right, (list, dict)):
                # == on two distinct trees that share sub-objects expands them: charge that.
                self.budget.charge(min(self.budget.measure(left)[1], self.budget.measure(right)[1]))
            equal = self.COMPARATOR_FUNC["eq"](left, right)
            return equal if node["value"] == "eq" else not equal
        return super().visit_comparator(node, value)

    def visit_flatten(self, node: dict, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        self.budget.charge(len(base))
        self.budget.charge(sum(len(e) if isinstance(e, list) else 1 for e in base))
        merged: list = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    def visit_slice(self, node: dict, value: Any) -> Any:
        if not isinstance(value, list):
            return None
        result = value[slice(*node["children"])]
        self.budget.charge(len(result))
        return result


_OPTIONS = Options()
_DISPATCH: dict[str, Callable[..., Any]] = {
    name[len("visit_") :]: getattr(BoundedInterpreter, name)
    for name in dir(BoundedInterpreter)
    if name.startswith("visit_")
}
