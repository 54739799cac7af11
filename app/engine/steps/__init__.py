"""Step types (DESIGN §4). Pure steps compute from the context; http_call talks to the world."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StepOutcome:
    status: str  # succeeded | failed | paused
    output: Any = None
    error: dict[str, Any] | None = None
