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

With a task queue (DISPATCH=cloud-tasks, in the worker), a retryable failure also enqueues the next
attempt's task at the row's run_after, so the retry does not wait for the sweeper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.errors import DatabaseError, DatabaseUnavailable, GenerationError
from planbus.kinds import AnyKind, Finished, Provenance
from planbus.services.outcomes import RequestOutcome
from planbus.settings import Settings
from planbus.state import Claimed, FailureDiscarded, NotClaimed, NotCompleted, RequestStates

if TYPE_CHECKING:
    from planbus.dispatch import TaskQueue
    from planbus.models import WebhookPayload

log = logs.get_logger("requests")

# SQLSTATE classes worth another attempt: serialization failures and deadlocks (40), lock and statement
# timeouts (55P03, 57014).
TRANSIENT_SQLSTATES = ("40", "55P03", "57014")
# A finished result is written again while the database is unreachable, until this close to the lease's end.
COMPLETION_WRITE_MARGIN_SECONDS = 2.0


def skipped_event(kind: AnyKind, event: WebhookPayload) -> RequestOutcome:
    """The answer to an event this kind's webhook does not act on: anything but an INSERT on its table
    that names its row (another kind's table included)."""
    reason = f"not an INSERT on public.{kind.table}: {event.type} on {event.schema_name}.{event.table}"
    return RequestOutcome(event.request_id_on(kind.table), "skipped", reason[:300])


def process_request(
    kind: AnyKind,
    db: Database,
    generator: Any,
    clock: Clock,
    request_id: str,
    *,
    settings: Settings,
    queue: TaskQueue | None = None,
) -> RequestOutcome:
    """Claim `request_id` and carry it to `completed`, or record a retryable or permanent failure (and,
    with a `queue`, enqueue the retry).

    Answers `skipped` when the row cannot be claimed (unknown, finished, held by a live lease, waiting for
    its retry time) or when this worker lost its claim before it could write.
    """
    kind.check(settings)  # a configuration error must not burn an attempt
    states = RequestStates(db, kind.name)
    with logs.bind(request_id=request_id, kind=kind.name):
        claimed_at = time.monotonic()
        claim = states.claim(
            request_id, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
        )
        if isinstance(claim, NotClaimed):
            log.info("%s request not claimed", kind.name, extra={"fields": {"reason": claim.reason}})
            return RequestOutcome(request_id, "skipped", claim.reason)
        with logs.bind(attempt=claim.attempt, generator=generator.name):
            attempt = _Attempt(kind, states, request_id, claim, claimed_at, settings, queue)
            return attempt.run(generator, clock)


@dataclass(frozen=True)
class _Attempt:
    """One claimed attempt of one request, carried to its end."""

    kind: AnyKind
    states: RequestStates
    request_id: str
    claim: Claimed
    claimed_at: float  # time.monotonic() when the claim was asked for: the lease runs from about then
    settings: Settings
    queue: TaskQueue | None

    def run(self, generator: Any, clock: Clock) -> RequestOutcome:
        kind, settings = self.kind, self.settings
        now = clock.now()
        try:
            job = kind.prepare(self.claim, now=now, settings=settings)
            started = time.monotonic()
            generation = kind.generate(generator, job, now=now, settings=settings)
            provenance = Provenance(
                generator=generator.name,
                model=generation.model,
                usage=generation.usage,
                latency_ms=round((time.monotonic() - started) * 1000),
                generated_at=now,
                attempt=self.claim.attempt,
                response_id=generation.response_id,
            )
            finished = kind.finish(job, generation, provenance, now=now, settings=settings)
        except GenerationError as exc:
            log.warning("%s generation failed", kind.noun, extra={"fields": {"error": str(exc)}})
            return self.fail(str(exc), retryable=exc.retryable, retry_after=exc.retry_after)
        except Exception as exc:
            # A defect here must not leave the row to wait out its lease: record it and let the attempt
            # budget end it.
            log.exception("unexpected error while generating a %s", kind.noun)
            return self.fail(
                f"unexpected error while generating the {kind.noun}: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        return self.complete(finished)

    def lease_left(self) -> float:
        """Seconds this attempt may still spend writing its result: the lease, less what has passed and a
        margin for the write itself (past the lease the fence refuses it anyway)."""
        passed = time.monotonic() - self.claimed_at
        return max(0.0, self.settings.lease_seconds - passed - COMPLETION_WRITE_MARGIN_SECONDS)

    def complete(self, finished: Finished) -> RequestOutcome:
        kind = self.kind
        try:
            answer = self.states.complete(
                self.request_id,
                self.claim.attempt,
                finished.result.model_dump(mode="json"),
                finished.completion,
                retry_for=self.lease_left(),
            )
        except DatabaseUnavailable:
            raise
        except DatabaseError as exc:
            log.exception("the database refused the %s", kind.noun)
            transient = (exc.sqlstate or "").startswith(TRANSIENT_SQLSTATES)
            return self.fail(f"could not store the {kind.noun}: {exc}", retryable=transient)
        if isinstance(answer, NotCompleted):
            log.warning("%s discarded", kind.noun, extra={"fields": {"reason": answer.reason}})
            return RequestOutcome(self.request_id, "skipped", f"result discarded: {answer.reason}")
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
        return RequestOutcome(self.request_id, "completed", None)

    def fail(self, message: str, *, retryable: bool, retry_after: float | None = None) -> RequestOutcome:
        answer = self.states.fail(
            self.request_id,
            self.claim.attempt,
            message,
            retryable=retryable,
            max_attempts=self.settings.max_attempts,
            retry_after=retry_after,
        )
        if isinstance(answer, FailureDiscarded):
            return RequestOutcome(self.request_id, "skipped", f"error discarded ({message}): {answer.reason}")
        if answer.status == "failed":
            return RequestOutcome(self.request_id, "failed", str(answer.error))
        reason = f"{message}; retry scheduled at {answer.run_after.isoformat()}"
        if self.queue is not None:
            # Only a worker with a task queue enqueues: inline dispatch never loads the dispatch code.
            from planbus.services.dispatch import enqueue_retry

            reason += enqueue_retry(
                self.kind,
                self.states,
                self.queue,
                self.request_id,
                self.claim.attempt + 1,
                answer.run_after,
                settings=self.settings,
            )
        return RequestOutcome(self.request_id, "failed", reason)
