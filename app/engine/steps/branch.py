"""branch: a JMESPath condition; output {"result": bool}. The untaken side is skipped by the driver."""
from jmespath.exceptions import JMESPathError

from app.engine.steps import StepOutcome
from app.workflows.templates import evaluate


def truthy(v) -> bool:
    # JMESPath truthiness: false, null, "", [] and {} are false.
    return not (v is None or v is False or v == "" or v == [] or v == {})


def execute(config: dict, context: dict) -> StepOutcome:
    try:
        return StepOutcome("succeeded", {"result": truthy(evaluate(config["condition"], context))})
    except JMESPathError as exc:
        return StepOutcome("failed", error={"type": "expression_error", "message": str(exc).splitlines()[0]})
