"""process_request against real PostgreSQL, for every registered kind: every path ends in a defined state,
and a worker that lost its claim can never write over a later attempt. The plan kind's own completion
(lead, reminders) is checked at the end.

The generators are the kinds' offline generators, wrapped to record, fail or block; the LLM edge itself is
faked at its transport in the function tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from planbus.clock import FixedClock, SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import ConfigurationError, GenerationError
from planbus.kinds import PLAN, AnyKind
from planbus.llm.offline import MODEL, offline_plan
from planbus.models import GeneratorName, LeadFacts, Plan, PlanResult
from planbus.services.outcomes import RequestOutcome
from planbus.services.requests import process_request
from planbus.settings import Settings
from support.clocks import OneReadingClock
from support.request_kinds import claimed_attempt, ready_request
from support.request_rows import error_history, request_row

Row = dict[str, Any]
SETTINGS = Settings(
    lease_seconds=120, openai_timeout=60, draft_openai_timeout=60, max_attempts=3, reminder_hour=10
)
OFFLINE = Settings(plan_generator="offline")


class RecordingGenerator:
    """The kind's offline generator, counting calls and keeping what it was given."""

    def __init__(self, kind: AnyKind) -> None:
        self.inner = kind.generator(OFFLINE)
        self.name: GeneratorName = "offline"
        self.inputs: list[Any] = []

    def generate(self, job: Any, **options: Any) -> Any:
        self.inputs.append(job)
        return self.inner.generate(job, **options)


class FailingGenerator:
    name: GeneratorName = "openai"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def generate(self, job: Any, **options: Any) -> Any:
        raise self.error


class BlockingGenerator:
    """Holds the worker inside generation until the test releases it (a frozen instance, a slow LLM), then
    answers as the kind's offline generator would, or raises `error`."""

    name: GeneratorName = "openai"

    def __init__(self, kind: AnyKind, error: Exception | None = None) -> None:
        self.inner = kind.generator(OFFLINE)
        self.error = error
        self.started = threading.Event()
        self.release = threading.Event()

    def generate(self, job: Any, **options: Any) -> Any:
        self.started.set()
        assert self.release.wait(30), "the test never released the worker"
        if self.error is not None:
            raise self.error
        return self.inner.generate(job, **options)


@pytest.fixture
def pending(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, make_lead: Callable[..., Row]
) -> Row:
    lead = make_lead(company="Eckert-Mauchly", title="Mathematician", notes="Asked about compilers.")
    return ready_request(sql, db, kind, lead)


def process(
    kind: AnyKind, db: PostgresDatabase, generator: Any, request_id: Any, settings: Settings = SETTINGS
) -> RequestOutcome:
    return process_request(kind, db, generator, SystemClock(), str(request_id), settings=settings)


def test_a_pending_request_is_completed_with_its_result_and_provenance(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    now = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
    generator = RecordingGenerator(kind)

    outcome = process_request(kind, db, generator, FixedClock(now), str(pending["id"]), settings=SETTINGS)

    assert outcome == RequestOutcome(str(pending["id"]), "completed", None)
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"], row["error"], row["lease_expires_at"]) == (
        "completed",
        1,
        None,
        None,
    )
    result = kind.result_model.model_validate(row["result"])
    assert (result.generator, result.attempt, result.usage) == ("offline", 1, None)  # type: ignore[attr-defined]
    assert result.generated_at == now  # type: ignore[attr-defined]
    assert len(generator.inputs) == 1


def test_an_unknown_request_is_skipped(db: PostgresDatabase, kind: AnyKind) -> None:
    generator = RecordingGenerator(kind)
    request_id = "00000000-0000-4000-8000-000000000000"

    assert process(kind, db, generator, request_id) == RequestOutcome(
        request_id, "skipped", "unknown request"
    )
    assert generator.inputs == []


def test_a_finished_request_is_skipped_and_left_as_it_was(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    process(kind, db, RecordingGenerator(kind), request_id)
    before = request_row(sql, request_id, kind.table)
    generator = RecordingGenerator(kind)

    outcome = process(kind, db, generator, request_id)

    assert outcome == RequestOutcome(request_id, "skipped", "already completed")
    assert request_row(sql, request_id, kind.table) == before
    assert generator.inputs == []


def test_a_request_held_by_a_live_lease_is_skipped(db: PostgresDatabase, kind: AnyKind, pending: Row) -> None:
    request_id = str(pending["id"])
    claimed_attempt(db, kind, request_id, lease=120)

    outcome = process(kind, db, RecordingGenerator(kind), request_id)

    assert outcome.outcome == "skipped"
    assert outcome.reason is not None and outcome.reason.startswith("held by another worker until")


def test_a_retryable_generation_error_returns_the_request_to_pending_after_a_backoff(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(GenerationError("OpenAI did not answer within 60 s", retryable=True))

    outcome = process(kind, db, generator, request_id)

    assert outcome.outcome == "failed"
    assert outcome.reason is not None
    assert outcome.reason.startswith("OpenAI did not answer within 60 s; retry scheduled at ")
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["attempts"], row["error"], row["lease_expires_at"]) == (
        "pending",
        1,
        None,
        None,
    )
    assert row["run_after"] > row["updated_at"]
    assert error_history(sql, request_id) == [(1, "OpenAI did not answer within 60 s")]


def test_the_servers_retry_after_sets_when_the_next_attempt_may_run(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(GenerationError("OpenAI answered 429", retryable=True, retry_after=300))

    outcome = process(kind, db, generator, request_id)

    row = request_row(sql, request_id, kind.table)
    assert outcome.reason == f"OpenAI answered 429; retry scheduled at {row['run_after'].isoformat()}"
    assert (row["run_after"] - row["updated_at"]).total_seconds() == pytest.approx(300, abs=0.01)
    basis = sql.execute(
        "SELECT retry_basis, retry_after_seconds FROM planbus_private.request_errors WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    assert basis == {"retry_basis": "retry_after", "retry_after_seconds": 300.0}


@pytest.mark.parametrize("retry_after", [float("nan"), float("inf"), -5.0])
def test_a_retry_after_that_is_no_wait_falls_back_to_the_backoff(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row, retry_after: float
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(
        GenerationError("OpenAI answered 429", retryable=True, retry_after=retry_after)
    )

    assert process(kind, db, generator, request_id).outcome == "failed"

    row = request_row(sql, request_id, kind.table)
    assert 4.5 <= (row["run_after"] - row["updated_at"]).total_seconds() <= 5.5


def test_a_permanent_generation_error_fails_the_request_with_the_reason(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    refusal = "the model refused: I can't help with that."
    generator = FailingGenerator(GenerationError(refusal, retryable=False))

    outcome = process(kind, db, generator, request_id)

    assert outcome == RequestOutcome(request_id, "failed", refusal)
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["error"], row["result"], row["lease_expires_at"]) == (
        "failed",
        refusal,
        None,
        None,
    )


def test_a_retryable_error_on_the_last_attempt_fails_for_good(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(GenerationError("OpenAI answered 503: overloaded", retryable=True))
    last_try = Settings(lease_seconds=120, openai_timeout=60, draft_openai_timeout=60, max_attempts=1)

    outcome = process(kind, db, generator, request_id, last_try)

    reason = "gave up after 1 attempts: OpenAI answered 503: overloaded"
    assert outcome == RequestOutcome(request_id, "failed", reason)
    assert request_row(sql, request_id, kind.table)["status"] == "failed"


def test_an_unexpected_error_in_generation_is_recorded_instead_of_waiting_out_the_lease(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])

    outcome = process(kind, db, FailingGenerator(KeyError("choices")), request_id)

    assert outcome.outcome == "failed"
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["lease_expires_at"]) == ("pending", None)
    assert error_history(sql, request_id) == [
        (1, f"unexpected error while generating the {kind.noun}: KeyError: 'choices'")
    ]


def test_a_misconfigured_time_zone_is_refused_before_the_request_is_claimed(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    # Both kinds count their days in REMINDER_TIMEZONE: a plan's offsets, a draft's "today".
    broken = Settings(lease_seconds=120, openai_timeout=60, reminder_timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError):
        process(kind, db, RecordingGenerator(kind), pending["id"], broken)
    row = request_row(sql, pending["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("pending", 0)


def test_a_result_the_database_refuses_fails_the_request_with_the_databases_reason(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    sql.execute(f"ALTER TABLE {kind.table} ADD CONSTRAINT result_too_small CHECK (length(result::text) < 10)")

    outcome = process(kind, db, RecordingGenerator(kind), request_id)

    assert outcome.outcome == "failed"
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["result"]) == ("failed", None)
    assert row["error"].startswith(
        f'could not store the {kind.noun}: new row for relation "{kind.table}" violates'
    )


def _late_worker(
    kind: AnyKind, db: PostgresDatabase, request_id: str, generator: BlockingGenerator
) -> tuple[ThreadPoolExecutor, Future[RequestOutcome]]:
    """Start a worker with a one-second lease and wait until it is inside generation."""
    short_lease = Settings(lease_seconds=1, openai_timeout=0.5, draft_openai_timeout=0.5, max_attempts=3)
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(process, kind, db, generator, request_id, short_lease)
    assert generator.started.wait(10)
    return pool, future


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite_the_newer_result(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    stale = BlockingGenerator(kind)
    pool, late = _late_worker(kind, db, request_id, stale)
    time.sleep(1.2)  # the first worker's lease runs out while it is still generating

    newer = process(kind, db, RecordingGenerator(kind), request_id)
    after_newer = request_row(sql, request_id, kind.table)
    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert newer == RequestOutcome(request_id, "completed", None)
    assert discarded.outcome == "skipped"
    assert discarded.reason == "result discarded: the claim is no longer held (lease expired or taken over)"
    row = request_row(sql, request_id, kind.table)
    assert row == after_newer
    assert (row["status"], row["attempts"], row["result"]["attempt"]) == ("completed", 2, 2)
    assert row["result"]["generator"] == "offline"
    assert error_history(sql, request_id) == [(1, "lease expired during attempt 1")]


def test_a_worker_whose_lease_expired_cannot_complete_even_if_nobody_took_over(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    stale = BlockingGenerator(kind)
    pool, late = _late_worker(kind, db, request_id, stale)
    time.sleep(1.2)

    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert discarded.outcome == "skipped"
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["result"]) == ("processing", None)


def test_a_late_failure_from_a_superseded_worker_changes_nothing(
    db: PostgresDatabase, sql: psycopg.Connection[Row], kind: AnyKind, pending: Row
) -> None:
    request_id = str(pending["id"])
    stale = BlockingGenerator(kind, GenerationError("the model refused: no", retryable=False))
    pool, late = _late_worker(kind, db, request_id, stale)
    time.sleep(1.2)
    process(kind, db, RecordingGenerator(kind), request_id)

    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert discarded.outcome == "skipped"
    assert discarded.reason is not None and discarded.reason.startswith("error discarded (the model refused")
    row = request_row(sql, request_id, kind.table)
    assert (row["status"], row["error"], row["attempts"]) == ("completed", None, 2)


# -- the plan kind's completion ------------------------------------------------------------------------


def reminders_of(sql: psycopg.Connection[Row], request_id: Any) -> list[Row]:
    return sql.execute(
        "SELECT * FROM reminders WHERE plan_request_id = %s ORDER BY step_index", (request_id,)
    ).fetchall()


@pytest.fixture
def pending_plan(make_lead: Callable[..., Row], make_request: Callable[..., Row]) -> Row:
    lead = make_lead(company="Eckert-Mauchly", title="Mathematician", notes="Asked about compilers.")
    return make_request(lead)


def test_a_plan_is_stored_on_the_lead_with_its_reminders_all_from_one_clock_reading(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending_plan: Row
) -> None:
    now = datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=UTC)
    generator = RecordingGenerator(PLAN)
    one_reading = OneReadingClock(now)

    outcome = process_request(PLAN, db, generator, one_reading, str(pending_plan["id"]), settings=SETTINGS)

    assert outcome == RequestOutcome(str(pending_plan["id"]), "completed", None)
    assert one_reading.readings == 1
    result = PlanResult.model_validate(request_row(sql, pending_plan["id"])["result"])
    assert (result.model, result.generated_at) == (MODEL, now)
    assert result.plan == offline_plan(generator.inputs[0])
    assert (
        generator.inputs[0].full_name == "Ada Lovelace"
        and generator.inputs[0].notes == "Asked about compilers."
    )

    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()
    assert lead is not None
    assert (lead["status"], lead["plan_request_id"]) == ("plan_ready", pending_plan["id"])
    assert Plan.model_validate(lead["plan"]) == result.plan

    reminders = reminders_of(sql, pending_plan["id"])
    assert [r["step_index"] for r in reminders] == list(range(len(result.plan.steps)))
    assert all(
        r["status"] == "scheduled" and r["telegram_id"] == pending_plan["telegram_id"] for r in reminders
    )
    # Day 0 is the day of the one reading (its 10:00 has passed: due at once); day 2 is two days on from it.
    assert reminders[0]["due_at"] == now
    assert reminders[1]["due_at"] == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert result.plan.steps[-1].message_draft in reminders[-1]["text"]


def test_a_newer_plan_builds_on_the_previous_one_and_replaces_its_reminders(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending_plan: Row, make_request: Callable[..., Row]
) -> None:
    generator = RecordingGenerator(PLAN)
    process(PLAN, db, generator, pending_plan["id"])
    first_plan = request_row(sql, pending_plan["id"])["result"]["plan"]
    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()
    assert lead is not None
    second = make_request(lead)

    outcome = process(PLAN, db, generator, second["id"])

    assert outcome.outcome == "completed"
    previous: LeadFacts = generator.inputs[1]
    assert (previous.plan, previous.status) == (first_plan, "plan_ready")
    assert {r["status"] for r in reminders_of(sql, pending_plan["id"])} == {"cancelled"}
    assert {r["status"] for r in reminders_of(sql, second["id"])} == {"scheduled"}


def test_a_permanent_plan_failure_leaves_the_lead_and_reminders_alone(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending_plan: Row
) -> None:
    generator = FailingGenerator(GenerationError("the model refused to write a plan: no", retryable=False))

    assert process(PLAN, db, generator, pending_plan["id"]).outcome == "failed"

    lead = sql.execute("SELECT status, plan FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()
    assert lead == {"status": None, "plan": None}
    assert reminders_of(sql, pending_plan["id"]) == []


def test_a_plan_the_database_refuses_fails_the_request_and_schedules_nothing(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending_plan: Row
) -> None:
    sql.execute("ALTER TABLE leads ADD CONSTRAINT leads_plan_too_small CHECK (length(plan::text) < 10)")

    assert process(PLAN, db, RecordingGenerator(PLAN), pending_plan["id"]).outcome == "failed"

    row = request_row(sql, pending_plan["id"])
    assert row["error"].startswith('could not store the plan: new row for relation "leads" violates check')
    assert reminders_of(sql, pending_plan["id"]) == []


def test_a_stale_plan_worker_leaves_the_newer_plans_lead_and_reminders(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending_plan: Row
) -> None:
    request_id = str(pending_plan["id"])
    stale = BlockingGenerator(PLAN)
    pool, late = _late_worker(PLAN, db, request_id, stale)
    time.sleep(1.2)
    process(PLAN, db, RecordingGenerator(PLAN), request_id)
    lead_after_newer = sql.execute("SELECT * FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()

    stale.release.set()
    assert late.result(timeout=30).outcome == "skipped"
    pool.shutdown()

    assert (
        sql.execute("SELECT * FROM leads WHERE id = %s", (pending_plan["lead_id"],)).fetchone()
        == lead_after_newer
    )
    row = request_row(sql, request_id)
    assert len(reminders_of(sql, request_id)) == len(row["result"]["plan"]["steps"])
