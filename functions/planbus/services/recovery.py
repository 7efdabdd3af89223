"""reset_stale_requests: the sweeper that keeps the request queue moving when workers or webhooks fail.

One call, in this order (the quick steps first, so a long LLM call cannot starve them):
1. `processing` rows whose lease expired go back to `pending`, or to `failed` once MAX_ATTEMPTS are used
   (planbus_reset_stale_requests);
2. finished requests, sent reminders and outbox rows past RETENTION_DAYS are pruned (planbus_prune);
3. `pending` rows nobody is going to deliver are processed, oldest first, while the time budget lasts:
   first attempts whose webhook is overdue by LOST_WEBHOOK_SECONDS (pg_net sends at most once) and retries
   whose backoff has passed (planbus_find_lost_requests). They go through process_plan_request, the
   webhook's own use case, whose atomic claim makes a concurrent webhook or sweeper skip the row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from planbus import logs
from planbus.clock import Clock
from planbus.db import Database
from planbus.llm import PlanGenerator
from planbus.services.plan_requests import process_plan_request
from planbus.settings import Settings

# A lost request costs one LLM call (up to OPENAI_TIMEOUT): the time budget, not this, is the usual bound.
DEFAULT_LIMIT = 20

log = logs.get_logger("recovery")


@dataclass(frozen=True)
class RecoveryCounts:
    """The contract's reset/failed/redispatched, the re-dispatched rows' outcomes, and what was pruned."""

    reset: int
    failed: int
    redispatched: int
    outcomes: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "reset": self.reset,
            "failed": self.failed,
            "redispatched": self.redispatched,
            "outcomes": dict(self.outcomes),
            "pruned": dict(self.pruned),
        }


def reset_stale_requests(
    db: Database, generator: PlanGenerator, clock: Clock, *, settings: Settings, limit: int | None = None
) -> RecoveryCounts:
    """Reset expired leases, prune past retention, then process up to `limit` lost pending requests."""
    deadline = clock.now() + timedelta(seconds=settings.function_budget_seconds)
    stale = db.call("planbus_reset_stale_requests", p_max_attempts=settings.max_attempts)
    pruned = db.call("planbus_prune", p_retention_days=settings.retention_days)
    lost = db.call(
        "planbus_find_lost_requests",
        p_grace_seconds=settings.lost_webhook_seconds,
        p_limit=DEFAULT_LIMIT if limit is None else limit,
    )
    outcomes: Counter[str] = Counter()
    for request_id in lost:
        if clock.now() >= deadline:
            log.info(
                "time budget spent: %s lost requests left for the next run", len(lost) - outcomes.total()
            )
            break
        with logs.bind(request_id=request_id):
            outcome = process_plan_request(db, generator, clock, request_id, settings=settings)
            log.info(
                "lost request re-dispatched: %s",
                outcome.outcome,
                extra={"fields": {"reason": outcome.reason}},
            )
        outcomes[outcome.outcome] += 1
    counts = RecoveryCounts(
        reset=int(stale["reset"]),
        failed=int(stale["failed"]),
        redispatched=outcomes.total(),
        outcomes=dict(outcomes),
        pruned={name: int(n) for name, n in pruned.items()},
    )
    log.info("sweep finished", extra={"fields": counts.as_json()})
    return counts
