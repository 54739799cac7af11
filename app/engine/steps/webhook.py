"""webhook: the entry step; its output is the run's input."""

from app.engine.steps import StepOutcome


def execute(config: dict, context: dict) -> StepOutcome:
    return StepOutcome("succeeded", context["input"])
