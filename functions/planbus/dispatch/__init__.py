"""Dispatch: hand each request attempt to its worker through a task queue (Google Cloud Tasks).

The webhook enqueues one task per request attempt and answers at once; Cloud Tasks then POSTs
`{"request_id": ...}` to the kind's worker target (`process_plan_request`, `process_draft_request`) with
the shared secret, retrying only what the worker answers with a 5xx. A task's name derives from the kind,
the request and the attempt, so every delivery of one webhook makes the same task and Cloud Tasks refuses
the duplicates (`EnqueueResult.created` is False).

    queue = cloud_tasks_queue(settings)          # once per process: it keeps one gRPC channel
    result = queue.enqueue(TaskRequest("plan", request_id, attempt, settings.worker_url("plan")))

This module imports nothing heavy: google-cloud-tasks and grpc are loaded by the first `enqueue`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from planbus.errors import ConfigurationError, PlanbusError
from planbus.settings import Settings

# Cloud Tasks task ids: letters, digits, hyphens and underscores, at most 500 characters.
_TASK_ID_PART = re.compile(r"[A-Za-z0-9_-]+")
MAX_TASK_ID = 500
# Cloud Tasks keeps a task's name for about an hour after the task ran or gave up, and refuses it meanwhile.
# The sweeper's task for an attempt therefore carries the round it was made in: a task that gave up (a
# worker answering 5xx until the queue's max_attempts) is followed by a new one in the next round, instead
# of ALREADY_EXISTS for an hour; within a round, repeated sweeps still make one task.
SWEEP_ROUND_SECONDS = 600


def sweep_round(now: datetime) -> int:
    """The sweeper's round at `now`: the number of SWEEP_ROUND_SECONDS since the epoch."""
    return int(now.timestamp() // SWEEP_ROUND_SECONDS)


@dataclass(frozen=True)
class TaskRequest:
    """One attempt of one request, to be delivered to `worker_url` (at `run_at`, else as soon as possible)."""

    kind: str
    request_id: str
    attempt: int
    worker_url: str
    run_at: datetime | None = None
    sweep: int | None = None  # the sweeper's round (sweep_round) for a task it makes; None for the others

    def __post_init__(self) -> None:
        for name, value in (("kind", self.kind), ("request_id", self.request_id)):
            if not _TASK_ID_PART.fullmatch(value):
                raise ValueError(f"task {name} {value[:80]!r} may hold only letters, digits, '-' and '_'")
        if self.attempt < 0:
            raise ValueError(f"task attempt {self.attempt} is negative")
        if self.sweep is not None and self.sweep < 0:
            raise ValueError(f"task sweep round {self.sweep} is negative")
        if len(self.task_id) > MAX_TASK_ID:
            raise ValueError(f"task id is longer than {MAX_TASK_ID} characters")
        parts = urlsplit(self.worker_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"worker_url {self.worker_url[:120]!r} is not an http(s) URL")
        if self.run_at is not None and self.run_at.utcoffset() is None:
            raise ValueError("run_at must be timezone-aware")

    @property
    def task_id(self) -> str:
        """`<kind>-<request_id>-<attempt>`: the same for every delivery of one attempt; the sweeper's tasks
        add `-s<round>`."""
        base = f"{self.kind}-{self.request_id}-{self.attempt}"
        return base if self.sweep is None else f"{base}-s{self.sweep}"


@dataclass(frozen=True)
class EnqueueResult:
    """`created` is False when the queue already had this task (a duplicate delivery): not an error."""

    created: bool
    task_name: str


class EnqueueError(PlanbusError):
    """The queue did not take the task; `code` is the gRPC status name (UNAVAILABLE, PERMISSION_DENIED,
    DEADLINE_EXCEEDED, ...). The request stays as it was: the sweeper enqueues it again later."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class TaskQueue(Protocol):
    """What the use cases need from a task queue."""

    def enqueue(self, task: TaskRequest) -> EnqueueResult:
        """Create the task, or find it already there; raises EnqueueError when the queue refuses."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def cloud_tasks_queue(settings: Settings) -> TaskQueue:
    """The Cloud Tasks queue CLOUD_TASKS_QUEUE names (on the emulator at CLOUD_TASKS_EMULATOR_HOST when
    set). ConfigurationError without a queue or a webhook secret: dispatch never falls back to inline."""
    if not settings.cloud_tasks_queue:
        raise ConfigurationError("DISPATCH is cloud-tasks but CLOUD_TASKS_QUEUE is not set")
    from planbus.dispatch.cloud_tasks import CloudTasksQueue

    return CloudTasksQueue(
        settings.cloud_tasks_queue,
        secret=settings.require_webhook_secret(),
        deadline=settings.dispatch_deadline,
        service_account=settings.cloud_tasks_service_account,
        emulator_host=settings.cloud_tasks_emulator_host,
    )


__all__ = [
    "EnqueueError",
    "EnqueueResult",
    "TaskQueue",
    "TaskRequest",
    "cloud_tasks_queue",
]
