"""Process one plan request: claim it, generate a plan, and complete it, or record why not.

Every transition is a SQL function (migrations/0003): the claim leases the row to this attempt, and
completion and failure are fenced on that attempt, so a worker whose lease expired cannot overwrite a
later attempt's result. Expected failures are data: a generator error is written to the row (back to
`pending` with a backoff, or `failed`) and answered as an outcome. Only `DatabaseUnavailable` escapes:
the row then keeps its lease until it expires and the sweeper (`reset_stale_requests`) takes it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.errors import DatabaseError, DatabaseUnavailable, GenerationError
from planbus.llm import PlanGenerator
from planbus.models import LeadFacts, PlanResult
from planbus.planning import ReminderDraft, reminder_zone, schedule_reminders
from planbus.settings import Settings

log = logs.get_logger("plan_requests")

Outcome = Literal["completed", "failed", "skipped"]

# SQLSTATE classes worth another attempt: serialization failures and deadlocks (40), lock and statement
# timeouts (55P03, 57014).
TRANSIENT_SQLSTATES = ("40", "55P03", "57014")


@dataclass(frozen=True)
class RequestOutcome:
    """What happened to one request on this call; the JSON answer of `handle_plan_request`."""

    request_id: str
    outcome: Outcome
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "outcome": self.outcome, "reason": self.reason}


def process_plan_request(
    db: Database, generator: PlanGenerator, clock: Clock, request_id: str, *, settings: Settings
) -> RequestOutcome:
    """Claim `request_id` and carry it to `completed`, or record a retryable or permanent failure.

    Answers `skipped` when the row cannot be claimed (unknown, finished, held by a live lease, waiting for
    its retry time) or when this worker lost its claim before it could write.
    """
    zone = reminder_zone(settings.reminder_timezone)  # a configuration error must not burn an attempt
    with logs.bind(request_id=request_id):
        claim = db.call(
            "planbus_claim_request",
            p_request_id=request_id,
            p_lease_seconds=settings.lease_seconds,
            p_max_attempts=settings.max_attempts,
        )
        if not claim["claimed"]:
            log.info("plan request not claimed", extra={"fields": {"reason": claim["reason"]}})
            return RequestOutcome(request_id, "skipped", claim["reason"])
        attempt = int(claim["attempt"])
        with logs.bind(attempt=attempt, generator=generator.name):
            try:
                lead = LeadFacts.model_validate(claim["lead"])
                now = clock.now()
                started = time.monotonic()
                generation = generator.generate(lead, today=now.astimezone(zone).date())
                result = PlanResult(
                    plan=generation.plan,
                    generator=generator.name,
                    model=generation.model,
                    usage=generation.usage,
                    latency_ms=round((time.monotonic() - started) * 1000),
                    generated_at=clock.now(),
                    attempt=attempt,
                    response_id=generation.response_id,
                )
                reminders = schedule_reminders(
                    result.plan, lead, now=clock.now(), hour=settings.reminder_hour, zone=zone
                )
            except GenerationError as exc:
                log.warning("plan generation failed", extra={"fields": {"error": str(exc)}})
                return _fail(db, request_id, attempt, str(exc), retryable=exc.retryable, settings=settings)
            except Exception as exc:
                # A defect here must not leave the row to wait out its lease: record it and let the
                # attempt budget end it.
                log.exception("unexpected error while generating a plan")
                message = f"unexpected error while generating the plan: {type(exc).__name__}: {exc}"
                return _fail(db, request_id, attempt, message, retryable=True, settings=settings)
            return _complete(db, request_id, attempt, result, reminders, settings=settings)


def _complete(
    db: Database,
    request_id: str,
    attempt: int,
    result: PlanResult,
    reminders: list[ReminderDraft],
    *,
    settings: Settings,
) -> RequestOutcome:
    try:
        answer = db.call(
            "planbus_complete_request",
            p_request_id=request_id,
            p_attempt=attempt,
            p_result=result.model_dump(mode="json"),
            p_plan=result.plan.model_dump(mode="json"),
            p_reminders=[reminder.as_json() for reminder in reminders],
        )
    except DatabaseUnavailable:
        raise
    except DatabaseError as exc:
        log.exception("the database refused the plan")
        transient = (exc.sqlstate or "").startswith(TRANSIENT_SQLSTATES)
        message = f"could not store the plan: {exc}"
        return _fail(db, request_id, attempt, message, retryable=transient, settings=settings)
    if not answer["completed"]:
        log.warning("plan discarded", extra={"fields": {"reason": answer["reason"]}})
        return RequestOutcome(request_id, "skipped", f"result discarded: {answer['reason']}")
    log.info(
        "plan request completed",
        extra={
            "fields": {
                "reminders": answer["reminders"],
                "cancelled_reminders": answer["cancelled_reminders"],
                "latency_ms": result.latency_ms,
                "model": result.model,
            }
        },
    )
    return RequestOutcome(request_id, "completed", None)


def _fail(
    db: Database, request_id: str, attempt: int, message: str, *, retryable: bool, settings: Settings
) -> RequestOutcome:
    answer = db.call(
        "planbus_fail_request",
        p_request_id=request_id,
        p_attempt=attempt,
        p_error=message,
        p_retryable=retryable,
        p_max_attempts=settings.max_attempts,
    )
    if not answer["recorded"]:
        return RequestOutcome(request_id, "skipped", f"error discarded ({message}): {answer['reason']}")
    if answer["status"] == "pending":
        return RequestOutcome(request_id, "failed", f"{message}; retry scheduled at {answer['run_after']}")
    return RequestOutcome(request_id, "failed", str(answer["error"]))
