"""terminate: ends the run as succeeded or failed; a failed terminate step is itself failed."""

from app.engine.steps import EXPRESSION_FAILURES, StepOutcome, expression_failed
from app.storable import storable_text
from app.workflows.templates import render


def execute(config: dict, context: dict) -> StepOutcome:
    status = config["status"]
    try:
        message = render(config.get("message"), context) if config.get("message") else None
    except EXPRESSION_FAILURES as exc:
        return expression_failed(exc)
    if message is not None and not isinstance(message, str):
        message = storable_text(str(message))
    out = {"status": status, "message": message}
    if status == "failed":
        return StepOutcome("failed", out, {"type": "terminated", "message": message or "terminated by workflow"})
    return StepOutcome("succeeded", out)
