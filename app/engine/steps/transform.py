"""transform: a JMESPath expression over the context; the result (made storable) is the output."""

from app.engine.steps import EXPRESSION_FAILURES, StepOutcome, expression_failed
from app.storable import to_storable
from app.workflows.templates import evaluate


def execute(config: dict, context: dict) -> StepOutcome:
    try:
        return StepOutcome("succeeded", to_storable(evaluate(config["expression"], context)))
    except EXPRESSION_FAILURES as exc:
        return expression_failed(exc)
