"""process_plan_request against real PostgreSQL: every path ends in a defined state, and a worker that lost
its claim can never write over a later attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest

from planbus.clock import FixedClock, SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import ConfigurationError, GenerationError
from planbus.llm import Generation
from planbus.llm.offline import MODEL, OfflineGenerator, offline_plan
from planbus.models import GeneratorName, LeadFacts, Plan, PlanResult
from planbus.services.plan_requests import RequestOutcome, process_plan_request
from planbus.settings import Settings
from support.request_rows import error_history, request_row

Row = dict[str, Any]
SETTINGS = Settings(lease_seconds=120, openai_timeout=60, max_attempts=3, reminder_hour=10)


class RecordingGenerator:
    """The offline generator, counting calls and keeping the leads it was given."""

    def __init__(self, name: GeneratorName = "offline") -> None:
        self.name = name
        self.leads: list[LeadFacts] = []

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        self.leads.append(lead)
        return OfflineGenerator().generate(lead, today=today)


class FailingGenerator:
    name: GeneratorName = "openai"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        raise self.error


class BlockingGenerator:
    """Holds the worker inside generation until the test releases it (a frozen instance, a slow LLM)."""

    name: GeneratorName = "openai"

    def __init__(self, outcome: Generation | Exception) -> None:
        self.outcome = outcome
        self.started = threading.Event()
        self.release = threading.Event()

    def generate(self, lead: LeadFacts, *, today: date) -> Generation:
        self.started.set()
        assert self.release.wait(30), "the test never released the worker"
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def reminders_of(sql: psycopg.Connection[Row], request_id: Any) -> list[Row]:
    return sql.execute(
        "SELECT * FROM reminders WHERE plan_request_id = %s ORDER BY step_index", (request_id,)
    ).fetchall()


@pytest.fixture
def pending(make_lead: Callable[..., Row], make_request: Callable[..., Row]) -> Row:
    lead = make_lead(company="Eckert-Mauchly", title="Mathematician", notes="Asked about compilers.")
    return make_request(lead)


def test_a_pending_request_is_completed_with_its_plan_lead_update_and_reminders(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    now = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
    generator = RecordingGenerator()

    outcome = process_plan_request(db, generator, FixedClock(now), str(pending["id"]), settings=SETTINGS)

    assert outcome == RequestOutcome(str(pending["id"]), "completed", None)
    row = request_row(sql, pending["id"])
    assert (row["status"], row["attempts"], row["error"], row["lease_expires_at"]) == (
        "completed",
        1,
        None,
        None,
    )
    result = PlanResult.model_validate(row["result"])
    assert (result.generator, result.model, result.attempt, result.usage) == ("offline", MODEL, 1, None)
    assert result.generated_at == now
    assert result.plan == offline_plan(generator.leads[0])
    assert (
        generator.leads[0].full_name == "Ada Lovelace"
        and generator.leads[0].notes == "Asked about compilers."
    )

    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    assert lead is not None
    assert lead["status"] == "plan_ready"
    assert Plan.model_validate(lead["plan"]) == result.plan
    assert lead["plan_generated_at"] is not None

    reminders = reminders_of(sql, pending["id"])
    assert [r["step_index"] for r in reminders] == list(range(len(result.plan.steps)))
    assert all(r["status"] == "scheduled" and r["telegram_id"] == pending["telegram_id"] for r in reminders)
    assert reminders[0]["due_at"] == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert result.plan.steps[-1].message_draft in reminders[-1]["text"]


def test_an_unknown_request_is_skipped(db: PostgresDatabase) -> None:
    generator = RecordingGenerator()
    request_id = "00000000-0000-4000-8000-000000000000"
    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=SETTINGS)

    assert outcome == RequestOutcome(request_id, "skipped", "unknown request")
    assert generator.leads == []


def test_a_finished_request_is_skipped_and_left_as_it_was(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    process_plan_request(db, RecordingGenerator(), SystemClock(), request_id, settings=SETTINGS)
    before = request_row(sql, request_id)
    generator = RecordingGenerator()

    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=SETTINGS)

    assert outcome == RequestOutcome(request_id, "skipped", "already completed")
    assert request_row(sql, request_id) == before
    assert generator.leads == []


def test_a_request_held_by_a_live_lease_is_skipped(db: PostgresDatabase, pending: Row) -> None:
    request_id = str(pending["id"])
    db.call("planbus_claim_request", p_request_id=request_id, p_lease_seconds=120, p_max_attempts=3)

    outcome = process_plan_request(db, RecordingGenerator(), SystemClock(), request_id, settings=SETTINGS)

    assert outcome.outcome == "skipped"
    assert outcome.reason is not None and outcome.reason.startswith("held by another worker until")


def test_a_retryable_generation_error_returns_the_request_to_pending_after_a_backoff(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(GenerationError("OpenAI did not answer within 60 s", retryable=True))

    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=SETTINGS)

    assert outcome.outcome == "failed"
    assert outcome.reason is not None
    assert outcome.reason.startswith("OpenAI did not answer within 60 s; retry scheduled at ")
    row = request_row(sql, request_id)
    assert (row["status"], row["attempts"], row["error"], row["lease_expires_at"]) == (
        "pending",
        1,
        None,
        None,
    )
    assert row["run_after"] > row["updated_at"]
    assert error_history(sql, request_id) == [(1, "OpenAI did not answer within 60 s")]
    assert reminders_of(sql, request_id) == []


def test_a_permanent_generation_error_fails_the_request_with_the_reason(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    refusal = "the model refused to write a plan: I can't help with that."
    generator = FailingGenerator(GenerationError(refusal, retryable=False))

    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=SETTINGS)

    assert outcome == RequestOutcome(request_id, "failed", refusal)
    row = request_row(sql, request_id)
    assert (row["status"], row["error"], row["result"], row["lease_expires_at"]) == (
        "failed",
        refusal,
        None,
        None,
    )
    lead = sql.execute("SELECT status, plan FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    assert lead == {"status": None, "plan": None}


def test_a_retryable_error_on_the_last_attempt_fails_for_good(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(GenerationError("OpenAI answered 503: overloaded", retryable=True))
    last_try = Settings(lease_seconds=120, openai_timeout=60, max_attempts=1)

    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=last_try)

    reason = "gave up after 1 attempts: OpenAI answered 503: overloaded"
    assert outcome == RequestOutcome(request_id, "failed", reason)
    assert request_row(sql, request_id)["status"] == "failed"


def test_an_unexpected_error_in_generation_is_recorded_instead_of_waiting_out_the_lease(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    generator = FailingGenerator(KeyError("choices"))

    outcome = process_plan_request(db, generator, SystemClock(), request_id, settings=SETTINGS)

    assert outcome.outcome == "failed"
    row = request_row(sql, request_id)
    assert (row["status"], row["lease_expires_at"]) == ("pending", None)
    assert error_history(sql, request_id) == [
        (1, "unexpected error while generating the plan: KeyError: 'choices'")
    ]


def test_a_misconfigured_time_zone_is_refused_before_the_request_is_claimed(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    broken = Settings(lease_seconds=120, openai_timeout=60, reminder_timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError):
        process_plan_request(db, RecordingGenerator(), SystemClock(), str(pending["id"]), settings=broken)
    row = request_row(sql, pending["id"])
    assert (row["status"], row["attempts"]) == ("pending", 0)


def test_a_newer_plan_builds_on_the_previous_one_and_replaces_its_reminders(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row, make_request: Callable[..., Row]
) -> None:
    generator = RecordingGenerator()
    process_plan_request(db, generator, SystemClock(), str(pending["id"]), settings=SETTINGS)
    first_plan = request_row(sql, pending["id"])["result"]["plan"]
    lead = sql.execute("SELECT * FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    assert lead is not None
    second = make_request(lead)

    outcome = process_plan_request(db, generator, SystemClock(), str(second["id"]), settings=SETTINGS)

    assert outcome.outcome == "completed"
    assert generator.leads[1].plan == first_plan
    assert generator.leads[1].status == "plan_ready"
    assert {r["status"] for r in reminders_of(sql, pending["id"])} == {"cancelled"}
    assert {r["status"] for r in reminders_of(sql, second["id"])} == {"scheduled"}


def test_a_plan_the_database_refuses_fails_the_request_with_the_databases_reason(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    sql.execute("ALTER TABLE leads ADD CONSTRAINT leads_plan_too_small CHECK (length(plan::text) < 10)")

    outcome = process_plan_request(db, RecordingGenerator(), SystemClock(), request_id, settings=SETTINGS)

    assert outcome.outcome == "failed"
    row = request_row(sql, request_id)
    assert (row["status"], row["result"]) == ("failed", None)
    assert row["error"].startswith('could not store the plan: new row for relation "leads" violates check')
    assert reminders_of(sql, request_id) == []


def _late_worker(
    db: PostgresDatabase, request_id: str, generator: BlockingGenerator
) -> tuple[ThreadPoolExecutor, Any]:
    """Start a worker with a one-second lease and wait until it is inside generation."""
    short_lease = Settings(lease_seconds=1, openai_timeout=0.5, max_attempts=3)
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(process_plan_request, db, generator, SystemClock(), request_id, settings=short_lease)
    assert generator.started.wait(10)
    return pool, future


def test_a_worker_whose_lease_was_taken_over_cannot_overwrite_the_newer_result(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    lead = LeadFacts.model_validate(
        sql.execute("SELECT * FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    )
    stale_plan = Plan.model_validate(
        {**offline_plan(lead).model_dump(), "summary": "the stale worker's plan"}
    )
    stale = BlockingGenerator(Generation(plan=stale_plan, model="stale-model"))
    pool, late = _late_worker(db, request_id, stale)
    time.sleep(1.2)  # the first worker's lease runs out while it is still generating

    newer = process_plan_request(db, RecordingGenerator(), SystemClock(), request_id, settings=SETTINGS)
    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert newer == RequestOutcome(request_id, "completed", None)
    assert discarded.outcome == "skipped"
    assert discarded.reason == "result discarded: the claim is no longer held (lease expired or taken over)"
    row = request_row(sql, request_id)
    assert (row["status"], row["attempts"]) == ("completed", 2)
    assert row["result"]["attempt"] == 2 and row["result"]["model"] == MODEL
    stored_lead = sql.execute("SELECT plan FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    assert stored_lead is not None and stored_lead["plan"]["summary"] != "the stale worker's plan"
    assert len(reminders_of(sql, request_id)) == len(row["result"]["plan"]["steps"])
    assert error_history(sql, request_id) == [(1, "lease expired during attempt 1")]


def test_a_worker_whose_lease_expired_cannot_complete_even_if_nobody_took_over(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    lead = LeadFacts.model_validate(
        sql.execute("SELECT * FROM leads WHERE id = %s", (pending["lead_id"],)).fetchone()
    )
    stale = BlockingGenerator(Generation(plan=offline_plan(lead), model="stale-model"))
    pool, late = _late_worker(db, request_id, stale)
    time.sleep(1.2)

    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert discarded.outcome == "skipped"
    row = request_row(sql, request_id)
    assert (row["status"], row["result"]) == ("processing", None)
    assert reminders_of(sql, request_id) == []


def test_a_late_failure_from_a_superseded_worker_changes_nothing(
    db: PostgresDatabase, sql: psycopg.Connection[Row], pending: Row
) -> None:
    request_id = str(pending["id"])
    stale = BlockingGenerator(GenerationError("the model refused to write a plan: no", retryable=False))
    pool, late = _late_worker(db, request_id, stale)
    time.sleep(1.2)
    process_plan_request(db, RecordingGenerator(), SystemClock(), request_id, settings=SETTINGS)

    stale.release.set()
    discarded = late.result(timeout=30)
    pool.shutdown()

    assert discarded.outcome == "skipped"
    assert discarded.reason is not None and discarded.reason.startswith("error discarded (the model refused")
    row = request_row(sql, request_id)
    assert (row["status"], row["error"], row["attempts"]) == ("completed", None, 2)
