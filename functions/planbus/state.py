"""The request state machine as the use cases see it: one method per SQL function, typed answers.

`RequestStates(db, kind)` calls the functions of migrations/0009 for one registered kind (the claim and
the completion generated per kind by 0018, so no call re-plans dynamic SQL) and turns their JSON into the
models below, so a use case reads `claim.attempt`, never `answer["attempt"]`. Every
transition lives in SQL; this module only names the arguments and reads the answers. Answers that say a
transition did not happen (`NotClaimed`, `NotCompleted`, `FailureDiscarded`) are data, not errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from planbus.db import Database
from planbus.db.retry import call_with_retry

RequestStatus = Literal["pending", "processing", "completed", "failed"]


class _Answer(BaseModel):
    # Built on first use: one request reads two or three of these answers.
    model_config = ConfigDict(defer_build=True, extra="ignore", frozen=True)


class Claimed(_Answer):
    """This worker holds the request for `attempt` until its lease expires."""

    attempt: int
    request: dict[str, Any]
    lead: dict[str, Any]


class NotClaimed(_Answer):
    """The request could not be claimed: unknown (`status` None), finished, held, or waiting for its retry."""

    status: RequestStatus | None
    reason: str


class Completed(_Answer):
    """The result is stored and the kind's completion step ran; `details` is what the step reported."""

    model_config = ConfigDict(defer_build=True, extra="allow", frozen=True)

    @property
    def details(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NotCompleted(_Answer):
    """The claim was no longer held: nothing was written."""

    status: RequestStatus | None
    reason: str


class FailureRecorded(_Answer):
    """The failure is written: back to `pending` until `run_after`, or `failed` for good with `error`."""

    status: Literal["pending", "failed"]
    run_after: datetime
    error: str | None


class FailureDiscarded(_Answer):
    """The claim was no longer held: the failure was not written."""

    status: RequestStatus | None
    reason: str


class DispatchCheck(_Answer):
    """What a task for the request would find: claimable `now` or `later` (at `run_at`) as `attempt`, or
    `skipped` with a reason."""

    dispatch: Literal["now", "later", "skipped"]
    status: RequestStatus | None
    attempt: int | None = None
    run_at: datetime | None = None
    reason: str | None = None


class LostRequest(_Answer):
    """A pending request nobody is going to deliver, and the attempt a claim of it would start."""

    id: str
    attempt: int
    run_after: datetime


class StaleReset(_Answer):
    """Expired leases handed back: `reset` to pending, `failed` for good."""

    reset: int
    failed: int


@dataclass(frozen=True)
class RequestStates:
    """The state machine of one request kind over the database port."""

    db: Database
    kind: str

    def claim(self, request_id: str, *, lease_seconds: int, max_attempts: int) -> Claimed | NotClaimed:
        answer = self.db.call(
            "planbus_claim_request",
            p_kind=self.kind,
            p_request_id=request_id,
            p_lease_seconds=lease_seconds,
            p_max_attempts=max_attempts,
        )
        return Claimed.model_validate(answer) if answer["claimed"] else NotClaimed.model_validate(answer)

    def complete(
        self,
        request_id: str,
        attempt: int,
        result: dict[str, Any],
        completion: dict[str, Any],
        *,
        retry_for: float = 0.0,
    ) -> Completed | NotCompleted:
        """Complete the claimed attempt; while the database is unreachable, try again for `retry_for`
        seconds (the fence makes a repeat safe), so a finished result outlives a short outage."""
        answer = call_with_retry(
            self.db,
            "planbus_complete_request",
            retry_for=retry_for,
            p_kind=self.kind,
            p_request_id=request_id,
            p_attempt=attempt,
            p_result=result,
            p_completion=completion,
        )
        if not answer["completed"]:
            return NotCompleted.model_validate(answer)
        return Completed.model_validate({k: v for k, v in answer.items() if k != "completed"})

    def fail(
        self,
        request_id: str,
        attempt: int,
        error: str,
        *,
        retryable: bool,
        max_attempts: int,
        retry_after: float | None = None,
    ) -> FailureRecorded | FailureDiscarded:
        answer = self.db.call(
            "planbus_fail_request",
            p_kind=self.kind,
            p_request_id=request_id,
            p_attempt=attempt,
            p_error=error,
            p_retryable=retryable,
            p_max_attempts=max_attempts,
            p_retry_after_seconds=_seconds(retry_after),
        )
        if not answer["recorded"]:
            return FailureDiscarded.model_validate(answer)
        return FailureRecorded.model_validate(answer)

    def dispatch_check(self, request_id: str) -> DispatchCheck:
        answer = self.db.call("planbus_dispatch_check", p_kind=self.kind, p_request_id=request_id)
        return DispatchCheck.model_validate(answer)

    def reset_stale(self, *, max_attempts: int) -> StaleReset:
        answer = self.db.call("planbus_reset_stale_requests", p_kind=self.kind, p_max_attempts=max_attempts)
        return StaleReset.model_validate(answer)

    def find_lost(self, *, grace_seconds: int, limit: int) -> list[LostRequest]:
        answer = self.db.call(
            "planbus_find_lost_requests", p_kind=self.kind, p_grace_seconds=grace_seconds, p_limit=limit
        )
        return [LostRequest.model_validate(item) for item in answer]

    def record_delivery(self, request_id: str, *, channel: str, outcome: str, detail: str | None) -> None:
        self.db.call(
            "planbus_record_delivery",
            p_kind=self.kind,
            p_request_id=request_id,
            p_channel=channel,
            p_outcome=outcome,
            p_detail=detail,
        )


def _seconds(retry_after: float | None) -> float | None:
    # What a server sent is not to be trusted: only a real, non-negative wait is passed on.
    if retry_after is None or not math.isfinite(retry_after) or retry_after < 0:
        return None
    return float(retry_after)
