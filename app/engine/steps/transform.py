"""transform: a JMESPath expression over the context; the result is the output."""
from jmespath.exceptions import JMESPathError

from app.engine.steps import StepOutcome
from app.workflows.templates import evaluate


def execute(config: dict, context: dict) -> StepOutcome:
    try:
        return StepOutcome("succeeded", evaluate(config["expression"], context))
    except JMESPathError as exc:
        return StepOutcome("failed", error={"type": "expression_error", "message": str(exc).splitlines()[0]})
