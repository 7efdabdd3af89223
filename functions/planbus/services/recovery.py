"""reset_stale_requests: the sweeper that keeps every kind's queue moving when workers or webhooks fail.

One call, in this order (the quick steps first, so a long LLM call cannot starve them):
1. for each kind, `processing` rows whose lease expired go back to `pending`, or to `failed` once
   MAX_ATTEMPTS are used (planbus_reset_stale_requests);
2. finished requests, sent reminders, outbox and delivery rows past RETENTION_DAYS are pruned
   (planbus_prune);
3. `pending` rows nobody is going to deliver, of every kind, oldest first: first attempts whose webhook
   is overdue by LOST_WEBHOOK_SECONDS (pg_net sends at most once), retries whose backoff has passed and
   the rows step 1 reset (planbus_find_lost_requests).
   - inline (no task queue): they are processed while the time budget lasts, through process_request, the
     webhook's own use case, whose atomic claim makes a concurrent webhook or sweeper skip the row;
   - cloud-tasks: each attempt is enqueued for its worker instead (no LLM call inside the sweeper's
     budget); a task the webhook or a worker already created is a duplicate the queue refuses.
   A first attempt re-dispatched here (its webhook never started it) is recorded as a delivery on
   channel 'sweeper', outcome 'recovered_lost': `planbus status` counts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.dispatch import TaskQueue, TaskRequest, sweep_round
from planbus.kinds import AnyKind
from planbus.services.dispatch import enqueue_attempt
from planbus.services.requests import process_request
from planbus.settings import Settings
from planbus.state import LostRequest, RequestStates

# A lost request costs one LLM call (up to its kind's timeout): the time budget, not this, is the usual
# bound.
DEFAULT_LIMIT = 20

log = logs.get_logger("recovery")


@dataclass(frozen=True)
class RecoveryCounts:
    """The contract's reset/failed/redispatched over every kind, the re-dispatched rows' outcomes, what was
    pruned, and the same counts per kind."""

    reset: int
    failed: int
    redispatched: int
    outcomes: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "reset": self.reset,
            "failed": self.failed,
            "redispatched": self.redispatched,
            "outcomes": dict(self.outcomes),
            "pruned": dict(self.pruned),
            "kinds": {name: dict(counts) for name, counts in self.kinds.items()},
        }


def reset_stale_requests(
    kinds: Sequence[AnyKind],
    db: Database,
    clock: Clock,
    *,
    generator_for: Callable[[AnyKind], Any],
    settings: Settings,
    queue: TaskQueue | None = None,
    limit: int | None = None,
) -> RecoveryCounts:
    """Reset expired leases, prune past retention, then process (or, with a `queue`, enqueue) up to
    `limit` lost pending requests of any kind, oldest first. `generator_for(kind)` is asked only for a kind
    that has a request to process."""
    deadline = clock.now() + timedelta(seconds=settings.function_budget_seconds)
    # Unset worker URLs are a configuration error before anything changes, not halfway through.
    worker_urls = {kind.name: kind.worker_url(settings) for kind in kinds} if queue is not None else {}
    per_kind = {kind.name: Counter[str]() for kind in kinds}
    for kind in kinds:
        stale = RequestStates(db, kind.name).reset_stale(max_attempts=settings.max_attempts)
        per_kind[kind.name].update(reset=stale.reset, failed=stale.failed)
    pruned = db.call("planbus_prune", p_retention_days=settings.retention_days)
    lost = _lost(kinds, db, settings=settings, limit=DEFAULT_LIMIT if limit is None else limit)

    outcomes: Counter[str] = Counter()
    for kind, request in lost:
        if clock.now() >= deadline:
            log.info(
                "time budget spent: %s lost requests left for the next run", len(lost) - outcomes.total()
            )
            break
        with logs.bind(request_id=request.id, kind=kind.name):
            what: str
            if queue is None:
                outcome = process_request(kind, db, generator_for(kind), clock, request.id, settings=settings)
                what, reason = outcome.outcome, outcome.reason
            else:
                task = TaskRequest(
                    kind.name,
                    request.id,
                    request.attempt,
                    worker_urls[kind.name],
                    sweep=sweep_round(clock.now()),
                )
                handed = enqueue_attempt(RequestStates(db, kind.name), queue, task)
                what, reason = handed.handed, handed.outcome.reason
            log.info("lost request re-dispatched: %s", what, extra={"fields": {"reason": reason}})
            if request.attempt == 1:
                # A first attempt the webhook never started: `planbus status` counts these as recovered.
                RequestStates(db, kind.name).record_delivery(
                    request.id, channel="sweeper", outcome="recovered_lost", detail=what
                )
        outcomes[what] += 1
        per_kind[kind.name]["redispatched"] += 1
    counts = RecoveryCounts(
        reset=sum(c["reset"] for c in per_kind.values()),
        failed=sum(c["failed"] for c in per_kind.values()),
        redispatched=outcomes.total(),
        outcomes=dict(outcomes),
        pruned={name: int(n) for name, n in pruned.items()},
        kinds={
            name: {key: c[key] for key in ("reset", "failed", "redispatched")} for name, c in per_kind.items()
        },
    )
    log.info("sweep finished", extra={"fields": counts.as_json()})
    return counts


def _lost(
    kinds: Sequence[AnyKind], db: Database, *, settings: Settings, limit: int
) -> list[tuple[AnyKind, LostRequest]]:
    """The oldest `limit` lost requests over every kind."""
    found = [
        (kind, request)
        for kind in kinds
        for request in RequestStates(db, kind.name).find_lost(
            grace_seconds=settings.lost_webhook_seconds, limit=limit
        )
    ]
    found.sort(key=lambda pair: (pair[1].run_after, pair[1].id))
    return found[:limit]
