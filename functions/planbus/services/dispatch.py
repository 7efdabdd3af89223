"""Hand a request attempt to its worker through the task queue (DISPATCH=cloud-tasks), with no LLM call.

The webhook asks the state machine what a task would find (planbus_dispatch_check, read-only), and
enqueues the attempt a claim would start: the task's name is `<kind>-<request_id>-<attempt>`, so every
delivery of one webhook makes the same task and the queue refuses the duplicates (`skipped: already
queued`). When the queue cannot take the task, nothing changes: the row stays `pending`, the failure is
recorded in planbus_private.webhook_deliveries, and the sweeper enqueues the row once its webhook counts
as lost. The same step enqueues a retry (at its run_after) and the sweeper's lost rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from planbus import logs
from planbus.db import Database
from planbus.dispatch import EnqueueError, TaskQueue, TaskRequest
from planbus.kinds import AnyKind
from planbus.services.outcomes import RequestOutcome
from planbus.settings import Settings
from planbus.state import RequestStates

log = logs.get_logger("dispatch")

Handed = Literal["queued", "already_queued", "not_queued"]


@dataclass(frozen=True)
class Enqueued:
    """What the queue did with one attempt, and the webhook's answer for it."""

    handed: Handed
    outcome: RequestOutcome


def enqueue_request(
    kind: AnyKind, db: Database, queue: TaskQueue, request_id: str, *, settings: Settings
) -> RequestOutcome:
    """The webhook in cloud-tasks mode: `queued` once the attempt's task exists; `skipped` for a row no task
    would claim (a live lease, finished, unknown), a duplicate delivery, or a queue that refused the task."""
    worker_url = kind.worker_url(settings)
    states = RequestStates(db, kind.name)
    with logs.bind(request_id=request_id, kind=kind.name):
        check = states.dispatch_check(request_id)
        if check.dispatch == "skipped" or check.attempt is None:
            log.info("%s request not queued", kind.name, extra={"fields": {"reason": check.reason}})
            return RequestOutcome(request_id, "skipped", check.reason)
        task = TaskRequest(kind.name, request_id, check.attempt, worker_url, run_at=check.run_at)
        return enqueue_attempt(states, queue, task).outcome


def enqueue_attempt(states: RequestStates, queue: TaskQueue, task: TaskRequest) -> Enqueued:
    """Create the task of one attempt; a refusal is recorded and answered, never raised."""
    when = f" for {task.run_at.isoformat()}" if task.run_at is not None else ""
    with logs.bind(attempt=task.attempt):
        try:
            result = queue.enqueue(task)
        except EnqueueError as exc:
            detail = str(exc) if exc.code in str(exc) else f"{exc.code}: {exc}"
            log.warning("task not created", extra={"fields": {"code": exc.code, "error": str(exc)}})
            states.record_delivery(
                task.request_id, channel="cloud_tasks", outcome="enqueue_failed", detail=detail
            )
            reason = (
                f"not queued ({detail}); the request stays pending and the sweeper (reset_stale_requests) "
                "will enqueue it"
            )
            return Enqueued("not_queued", RequestOutcome(task.request_id, "skipped", reason[:500]))
        if not result.created:
            log.info("task already queued", extra={"fields": {"task": result.task_name}})
            return Enqueued("already_queued", RequestOutcome(task.request_id, "skipped", "already queued"))
        log.info("task queued", extra={"fields": {"task": result.task_name}})
        scheduled = f"attempt {task.attempt} scheduled{when}" if when else None
        return Enqueued("queued", RequestOutcome(task.request_id, "queued", scheduled))


def enqueue_retry(
    kind: AnyKind,
    states: RequestStates,
    queue: TaskQueue,
    request_id: str,
    attempt: int,
    run_after: datetime,
    *,
    settings: Settings,
) -> str:
    """After a retryable failure: the next attempt's task at the row's run_after. Returns what to add to the
    failed request's reason."""
    task = TaskRequest(kind.name, request_id, attempt, kind.worker_url(settings), run_at=run_after)
    done = enqueue_attempt(states, queue, task)
    if done.handed == "not_queued":
        return f"; attempt {attempt} {done.outcome.reason}"
    return f"; attempt {attempt} queued"
