from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.secrets.redaction import MIN_SECRET_LENGTH
from app.storable import StorableText

Role = Literal["owner", "editor", "viewer"]


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StorableText = Field(min_length=1, max_length=200, examples=["Payments"])


class ProjectRead(BaseModel):
    id: uuid.UUID
    name: str
    created_by: uuid.UUID
    created_at: datetime
    role: Role


class ProjectList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    items: list[ProjectRead]
    next_cursor: str | None = None


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: uuid.UUID
    role: Role


class MemberRead(BaseModel):
    project_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    created_at: datetime


class MemberList(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent: required in the spec
    items: list[MemberRead]
    next_cursor: str | None = None


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # At least 8 characters (DESIGN §9.2): every form of every secret is masked in what runs store,
    # and a shorter value would rewrite unrelated text.
    value: str = Field(min_length=MIN_SECRET_LENGTH, max_length=65536)
