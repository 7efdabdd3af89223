"""Process one request of any kind: claim it, generate its result, and complete it, or record why not.

Every transition is a SQL function (migrations/0009), reached through `RequestStates`: the claim leases
the row to this attempt, and completion and failure are fenced on that attempt, so a worker whose lease
expired cannot overwrite a later attempt's result. What differs between kinds (the input, the generator,
the result and the completion step's arguments) comes from the kind's registration. Expected failures are
data: a generator error is written to the row (back to `pending` with a backoff, or `failed`) and
answered as an outcome. Only `DatabaseUnavailable` escapes: the row then keeps its lease until it
expires and the sweeper (`reset_stale_requests`) takes it back.

The clock is read once per request: the prompt's "today", the result's `generated_at` and the base of any
schedule the kind derives from it are the same instant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.errors import DatabaseError, DatabaseUnavailable, GenerationError
from planbus.kinds import AnyKind, Finished, Provenance
from planbus.models import WebhookPayload
from planbus.settings import Settings
from planbus.state import Claimed, FailureDiscarded, NotClaimed, NotCompleted, RequestStates

log = logs.get_logger("requests")

Outcome = Literal["completed", "failed", "skipped", "queued"]

# SQLSTATE classes worth another attempt: serialization failures and deadlocks (40), lock and statement
# timeouts (55P03, 57014).
TRANSIENT_SQLSTATES = ("40", "55P03", "57014")


@dataclass(frozen=True)
class RequestOutcome:
    """What happened to one request on this call; the JSON answer of the webhook and worker targets."""

    request_id: str | None
    outcome: Outcome
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "outcome": self.outcome, "reason": self.reason}


def event_skipped(kind: AnyKind, event: WebhookPayload) -> RequestOutcome | None:
    """`skipped` for an event this kind's webhook does not act on (anything but an INSERT on its table,
    another kind's table included); None for one it does."""
    if event.is_insert_on(kind.table) and event.request_id_on(kind.table) is not None:
        return None
    reason = f"not an INSERT on public.{kind.table}: {event.type} on {event.schema_name}.{event.table}"
    return RequestOutcome(event.request_id_on(kind.table), "skipped", reason[:300])


def process_request(
    kind: AnyKind, db: Database, generator: Any, clock: Clock, request_id: str, *, settings: Settings
) -> RequestOutcome:
    """Claim `request_id` and carry it to `completed`, or record a retryable or permanent failure.

    Answers `skipped` when the row cannot be claimed (unknown, finished, held by a live lease, waiting for
    its retry time) or when this worker lost its claim before it could write.
    """
    kind.check(settings)  # a configuration error must not burn an attempt
    states = RequestStates(db, kind.name)
    with logs.bind(request_id=request_id, kind=kind.name):
        claim = states.claim(
            request_id, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
        )
        if isinstance(claim, NotClaimed):
            log.info("%s request not claimed", kind.name, extra={"fields": {"reason": claim.reason}})
            return RequestOutcome(request_id, "skipped", claim.reason)
        with logs.bind(attempt=claim.attempt, generator=generator.name):
            return _work(kind, states, generator, clock, claim, settings=settings)


def _work(
    kind: AnyKind, states: RequestStates, generator: Any, clock: Clock, claim: Claimed, *, settings: Settings
) -> RequestOutcome:
    request_id = str(claim.request["id"])
    now = clock.now()
    try:
        job = kind.prepare(claim, now=now, settings=settings)
        started = time.monotonic()
        generation = kind.generate(generator, job, now=now, settings=settings)
        provenance = Provenance(
            generator=generator.name,
            model=generation.model,
            usage=generation.usage,
            latency_ms=round((time.monotonic() - started) * 1000),
            generated_at=now,
            attempt=claim.attempt,
            response_id=generation.response_id,
        )
        finished = kind.finish(job, generation, provenance, now=now, settings=settings)
    except GenerationError as exc:
        log.warning("%s generation failed", kind.noun, extra={"fields": {"error": str(exc)}})
        return _fail(
            states, request_id, claim.attempt, str(exc), exc.retryable, settings, retry_after=exc.retry_after
        )
    except Exception as exc:
        # A defect here must not leave the row to wait out its lease: record it and let the attempt
        # budget end it.
        log.exception("unexpected error while generating a %s", kind.noun)
        message = f"unexpected error while generating the {kind.noun}: {type(exc).__name__}: {exc}"
        return _fail(states, request_id, claim.attempt, message, True, settings)
    return _complete(kind, states, request_id, claim.attempt, finished, settings)


def _complete(
    kind: AnyKind,
    states: RequestStates,
    request_id: str,
    attempt: int,
    finished: Finished,
    settings: Settings,
) -> RequestOutcome:
    try:
        answer = states.complete(
            request_id, attempt, finished.result.model_dump(mode="json"), finished.completion
        )
    except DatabaseUnavailable:
        raise
    except DatabaseError as exc:
        log.exception("the database refused the %s", kind.noun)
        transient = (exc.sqlstate or "").startswith(TRANSIENT_SQLSTATES)
        message = f"could not store the {kind.noun}: {exc}"
        return _fail(states, request_id, attempt, message, transient, settings)
    if isinstance(answer, NotCompleted):
        log.warning("%s discarded", kind.noun, extra={"fields": {"reason": answer.reason}})
        return RequestOutcome(request_id, "skipped", f"result discarded: {answer.reason}")
    result = finished.result
    log.info(
        "%s request completed",
        kind.name,
        extra={
            "fields": {
                **answer.details,
                **finished.log_fields,
                "latency_ms": getattr(result, "latency_ms", None),
                "model": getattr(result, "model", None),
            }
        },
    )
    return RequestOutcome(request_id, "completed", None)


def _fail(
    states: RequestStates,
    request_id: str,
    attempt: int,
    message: str,
    retryable: bool,
    settings: Settings,
    *,
    retry_after: float | None = None,
) -> RequestOutcome:
    answer = states.fail(
        request_id,
        attempt,
        message,
        retryable=retryable,
        max_attempts=settings.max_attempts,
        retry_after=retry_after,
    )
    if isinstance(answer, FailureDiscarded):
        return RequestOutcome(request_id, "skipped", f"error discarded ({message}): {answer.reason}")
    if answer.status == "pending":
        return RequestOutcome(
            request_id, "failed", f"{message}; retry scheduled at {answer.run_after.isoformat()}"
        )
    return RequestOutcome(request_id, "failed", str(answer.error))
