"""delay: durable; the run sleeps in the database (runs.wake_at), not in a worker."""

from app.engine.steps import StepOutcome


def finished(seconds: float) -> StepOutcome:
    return StepOutcome("succeeded", {"waited_s": seconds})
