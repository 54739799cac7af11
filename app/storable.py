"""Request value types that PostgreSQL text/jsonb columns and orjson can hold, so that such input
is a 422 naming the field at the edge rather than a driver error deep inside a transaction."""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_JSON_DEPTH = 64
# NUL cannot be stored in text or jsonb; a lone surrogate cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson can serialize


def _text(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL characters or unpaired surrogates")
    return value


def check_json(value: Any) -> Any:
    """Raise ValueError unless jsonb can store `value` (and orjson serialize it)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        v, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(v, str):
            if _UNSTORABLE.search(v):
                raise ValueError(f"{where or 'value'}: strings must not contain NUL characters or unpaired surrogates")
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if not _INT_MIN <= v <= _INT_MAX:
                raise ValueError(f"{where or 'value'}: integer out of the 64-bit range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"{where or 'value'}: numbers must be finite")
        elif isinstance(v, dict):
            for k, item in v.items():
                if _UNSTORABLE.search(k):
                    raise ValueError(f"{where or 'value'}: keys must not contain NUL characters or unpaired surrogates")
                stack.append((item, depth + 1, f"{where}.{k}" if where else k))
        elif isinstance(v, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(v))
    return value


StorableText = Annotated[str, AfterValidator(_text)]
"""A string without NUL characters or unpaired surrogates."""

StorableObject = Annotated[dict[str, Any], AfterValidator(check_json)]
"""A JSON object PostgreSQL jsonb can store: no NUL, finite numbers, 64-bit integers, ≤ 64 levels deep."""
