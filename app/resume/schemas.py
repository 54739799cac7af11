from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.storable import StorableObject, StorableText, check_json

StepOutputs = Annotated[dict[Annotated[str, Field(min_length=1, max_length=100)], Any], AfterValidator(check_json)]


class ResumeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"from_step": "charge", "reason": "Upstream API fixed"},
                {"from_step": "charge", "input": {"amount": 40}, "workflow_version": "latest"},
                {"from_step": "review", "reason": "approved"},
                {
                    "from_step": "charge",
                    "outputs": {"charge": {"status": 200, "body": {"paid": True}}},
                    "reason": "paid by phone",
                },
                {"from_step": "total", "rerun": True, "reason": "the total expression was wrong"},
            ]
        },
    )
    from_step: StorableText = Field(
        min_length=1, max_length=100, description="Key of the failed, paused or cancelled step"
    )
    input: StorableObject | None = Field(default=None, description="Replaces the parent's input when given")
    workflow_version: Literal["original", "latest"] | Annotated[int, Field(ge=1, le=2_147_483_647, strict=True)] = (
        Field(default="original", description="`original` (the parent's version), `latest`, or a version number")
    )
    reason: StorableText | None = Field(default=None, max_length=500)
    rerun: bool = Field(
        default=False,
        strict=True,
        description=(
            "Re-execute deliberately (DESIGN §10.2): any step of a succeeded, failed, cancelled or resolved run whose "
            "ancestors all succeeded or were skipped may be chosen (`rerunnable_steps`); it and its descendants run "
            "again. Also allows resuming a resolved run."
        ),
    )
    outputs: StepOutputs | None = Field(
        default=None,
        description=(
            "Mark steps succeeded with these outputs instead of executing them (DESIGN §10.2): step key → output. "
            "Only steps the plan re-executes; each output at most MESHHOOK_MAX_OUTPUT_BYTES as JSON (else 413)."
        ),
    )


class ResumePlanRead(BaseModel):
    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True,
        json_schema_extra={
            "examples": [
                {
                    "from_step": "charge",
                    "reuse": ["start"],
                    "rerun": ["summary"],
                    "override": ["charge"],
                    "eligible_steps": ["charge"],
                    "rerunnable_steps": ["start", "charge"],
                }
            ]
        },
    )
    from_step: str
    reuse: list[str] = Field(description="Steps copied with their stored output, never executed")
    rerun: list[str] = Field(description="Steps the new run executes")
    override: list[str] = Field(default_factory=list, description="Steps recorded succeeded with the given `outputs`")
    eligible_steps: list[str]
    rerunnable_steps: list[str] = Field(default_factory=list, description='Steps `"rerun": true` may start from')
