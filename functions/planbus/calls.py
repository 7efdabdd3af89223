"""The body a scheduled function takes, validated at its entry point (apart from the models, which the
reminder sender does not otherwise load)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ScheduledCall(BaseModel):
    """The optional body of a scheduled call: at most how many rows this call may take on."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    limit: int | None = Field(default=None, ge=1, le=10_000)
