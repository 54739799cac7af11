"""Step types (DESIGN §4). Pure steps compute from the context; http_call talks to the world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jmespath.exceptions import JMESPathError

from app.storable import Unstorable, storable_text
from app.workflows.expressions import ExpressionLimit
from app.workflows.templates import TemplateError


@dataclass
class StepOutcome:
    status: str  # succeeded | failed | paused
    output: Any = None
    error: dict[str, Any] | None = None


EXPRESSION_FAILURES = (ExpressionLimit, Unstorable, JMESPathError, TemplateError)


def expression_failed(exc: Exception) -> StepOutcome:
    """The failed outcome of a step whose expression raised one of EXPRESSION_FAILURES:
    `expression_limit`, `unstorable_output` or `expression_error`, with a storable message."""
    if isinstance(exc, (ExpressionLimit, Unstorable)):
        type_ = exc.error_type
    else:
        type_ = "expression_error"
    # JMESPath errors quote the offending value, which may hold NUL: keep the first line, storable.
    message = storable_text((str(exc).splitlines() or [type(exc).__name__])[0][:500])
    return StepOutcome("failed", error={"type": type_, "message": message})
