"""terminate: ends the run as succeeded or failed; a failed terminate step is itself failed."""
from app.engine.steps import StepOutcome
from app.workflows.templates import render


def execute(config: dict, context: dict) -> StepOutcome:
    status = config["status"]
    message = render(config.get("message"), context) if config.get("message") else None
    out = {"status": status, "message": message}
    if status == "failed":
        return StepOutcome("failed", out, {"type": "terminated", "message": message or "terminated by workflow"})
    return StepOutcome("succeeded", out)
