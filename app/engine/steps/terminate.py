"""terminate: ends the run as succeeded or failed; a failed terminate step is itself failed."""
from jmespath.exceptions import JMESPathError

from app.engine.steps import StepOutcome
from app.workflows.templates import render


def execute(config: dict, context: dict) -> StepOutcome:
    status = config["status"]
    try:
        message = render(config.get("message"), context) if config.get("message") else None
    except JMESPathError as exc:
        return StepOutcome("failed", error={"type": "expression_error", "message": str(exc).splitlines()[0]})
    if message is not None and not isinstance(message, str):
        message = str(message)
    out = {"status": status, "message": message}
    if status == "failed":
        return StepOutcome("failed", out, {"type": "terminated", "message": message or "terminated by workflow"})
    return StepOutcome("succeeded", out)
