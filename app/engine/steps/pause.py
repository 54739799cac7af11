"""pause: the step (and then the run) becomes paused; a resume from it completes it."""

from app.engine.steps import StepOutcome


def execute(config: dict, context: dict, run) -> StepOutcome:
    if run["trigger"] == "resume" and run["resumed_from_step"] == context["_step_key"]:
        return StepOutcome(
            "succeeded",
            {
                "resumed_by": str(run["created_by"]) if run["created_by"] else None,
                "resumed_at": run["created_at"].isoformat(),
                "reason": run["resume_reason"],
            },
        )
    return StepOutcome("paused", {"message": config.get("message")} if config.get("message") else None)
