"""branch: a JMESPath condition; output {"result": bool}. The untaken side is skipped by the driver."""

from app.engine.steps import EXPRESSION_FAILURES, StepOutcome, expression_failed
from app.workflows.templates import evaluate


def truthy(v) -> bool:
    # JMESPath truthiness: false, null, "", [] and {} are false.
    return not (v is None or v is False or v == "" or v == [] or v == {})


def execute(config: dict, context: dict) -> StepOutcome:
    try:
        return StepOutcome("succeeded", {"result": truthy(evaluate(config["condition"], context))})
    except EXPRESSION_FAILURES as exc:
        return expression_failed(exc)
