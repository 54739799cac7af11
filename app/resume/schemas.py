from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.storable import StorableObject, StorableText


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"from_step": "charge", "reason": "Upstream API fixed"},
        {"from_step": "charge", "input": {"amount": 40}, "workflow_version": "latest"},
    ]})
    from_step: StorableText = Field(min_length=1, max_length=100, description="Key of the failed, paused or cancelled step")
    input: StorableObject | None = Field(default=None, description="Replaces the parent's input when given")
    workflow_version: Literal["original", "latest"] | Annotated[int, Field(ge=1, le=2_147_483_647, strict=True)] = Field(
        default="original", description="`original` (the parent's version), `latest`, or a version number")
    reason: StorableText | None = Field(default=None, max_length=500)


class ResumePlanRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "from_step": "charge", "reuse": ["start"], "rerun": ["charge", "summary"], "eligible_steps": ["charge"]}]})
    from_step: str
    reuse: list[str]
    rerun: list[str]
    eligible_steps: list[str]
