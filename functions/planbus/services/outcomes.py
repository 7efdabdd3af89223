"""The answer every request use case gives: what happened to one request on this call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["completed", "failed", "skipped", "queued"]


@dataclass(frozen=True)
class RequestOutcome:
    """One request's outcome on this call; the JSON answer of the webhook and worker targets."""

    request_id: str | None
    outcome: Outcome
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "outcome": self.outcome, "reason": self.reason}
