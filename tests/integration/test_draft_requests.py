"""What only the draft kind does, against real PostgreSQL: the step comes from the lead's current plan, a
bad input fails at once before any LLM call, the draft goes into that step's scheduled reminder, and a
lead has at most one active draft per step. (Everything the kinds share runs for drafts in the
parametrized state-machine, process, RLS and webhook tests.)"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.drafting import DraftResult
from planbus.errors import DatabaseError
from planbus.kinds import DRAFT, PLAN
from planbus.llm.drafts import make_draft_generator
from planbus.models import GeneratorName
from planbus.services.outcomes import RequestOutcome
from planbus.services.requests import process_request
from planbus.settings import Settings
from support.clocks import OneReadingClock
from support.drafts import VALID_DRAFT
from support.openai_fakes import FakeOpenAI, completion
from support.request_kinds import (
    claim_request,
    claimed_attempt,
    complete_request,
    insert_request,
    ready_request,
)
from support.request_rows import request_row

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]
SETTINGS = Settings(plan_generator="offline", proof_url_hosts="project.supabase.co")


class RecordingDrafts:
    """The offline draft generator, keeping what it was asked."""

    name: GeneratorName = "offline"

    def __init__(self) -> None:
        self.inner = DRAFT.generator(SETTINGS)
        self.inputs: list[Any] = []

    def generate(self, draft_input: Any, **options: Any) -> Any:
        self.inputs.append(draft_input)
        return self.inner.generate(draft_input, **options)


def draft(db: PostgresDatabase, request: Row, generator: Any | None = None) -> RequestOutcome:
    return process_request(
        DRAFT, db, generator or RecordingDrafts(), SystemClock(), str(request["id"]), settings=SETTINGS
    )


def reminders(sql: Sql, lead: Row) -> list[Row]:
    return sql.execute(
        "SELECT r.step_index, r.status, r.text, r.plan_request_id FROM reminders r"
        " JOIN leads l ON l.id = r.lead_id AND l.plan_request_id = r.plan_request_id"
        " WHERE r.lead_id = %s ORDER BY r.step_index",
        (lead["id"],),
    ).fetchall()


@pytest.fixture
def lead(make_lead: Callable[..., Row]) -> Row:
    return make_lead(company="Analytical Engines", notes="Met at the Royal Society.")


def test_a_draft_for_a_step_of_the_current_plan_is_stored_and_put_into_that_steps_reminder(
    db: PostgresDatabase, sql: Sql, lead: Row
) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=1, instructions="Mention the pilot.")
    before = reminders(sql, lead)
    generator = RecordingDrafts()

    assert draft(db, request, generator).outcome == "completed"

    [asked] = generator.inputs
    plan = sql.execute("SELECT plan FROM leads WHERE id = %s", (lead["id"],)).fetchone()
    assert plan is not None
    assert (asked.step_index, asked.step.model_dump(mode="json")) == (1, plan["plan"]["steps"][1])
    assert asked.instructions == "Mention the pilot."
    result = DraftResult.model_validate(request_row(sql, request["id"], DRAFT.table)["result"])
    assert (result.generator, result.attempt) == ("offline", 1)
    after = reminders(sql, lead)
    assert [r["text"] for r in after if r["step_index"] != 1] == [
        r["text"] for r in before if r["step_index"] != 1
    ]
    [step] = [r for r in after if r["step_index"] == 1]
    assert step["status"] == "scheduled"
    assert step["text"].startswith(f"Step 2 of {len(after)}")
    assert step["text"].endswith(result.draft.text)


def test_the_prompts_day_and_the_results_time_come_from_one_clock_reading_in_the_salespersons_zone(
    db: PostgresDatabase, sql: Sql, lead: Row
) -> None:
    # 23:30 UTC on the 28th is already the 29th in Auckland.
    now = datetime(2026, 11, 28, 23, 30, tzinfo=UTC)
    settings = Settings(
        openai_api_key=SecretStr("sk-test-key"), plan_generator="openai", reminder_timezone="Pacific/Auckland"
    )
    fake = FakeOpenAI(completion(VALID_DRAFT))
    generator = make_draft_generator(settings, http_client=fake.client())
    request = ready_request(sql, db, DRAFT, lead, step_index=0)
    clock = OneReadingClock(now)

    outcome = process_request(DRAFT, db, generator, clock, str(request["id"]), settings=settings)

    assert outcome.outcome == "completed"
    assert clock.readings == 1
    [body] = fake.bodies()
    assert "Today is 2026-11-29." in body["messages"][1]["content"][0]["text"]
    result = DraftResult.model_validate(request_row(sql, request["id"], DRAFT.table)["result"])
    assert (result.generator, result.generated_at) == ("openai", now)


def test_a_sent_reminder_keeps_the_text_it_was_sent_with(db: PostgresDatabase, sql: Sql, lead: Row) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=0)
    sql.execute(
        "UPDATE reminders SET status = 'sent', sent_at = now(), delivered_via = 'telegram', text = 'as sent'"
        " WHERE lead_id = %s AND step_index = 0",
        (lead["id"],),
    )

    assert draft(db, request).outcome == "completed"

    assert reminders(sql, lead)[0]["text"] == "as sent"


def test_a_draft_completed_after_a_newer_plan_leaves_the_newer_plans_reminders_alone(
    db: PostgresDatabase, sql: Sql, lead: Row
) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=0)
    claim = claim_request(db, DRAFT, request["id"])
    old_plan = claim["lead"]["plan_request_id"]
    newer = insert_request(sql, PLAN, lead)
    replanned = process_request(
        PLAN, db, PLAN.generator(SETTINGS), SystemClock(), str(newer["id"]), settings=SETTINGS
    )
    assert replanned.outcome == "completed"
    current = reminders(sql, lead)

    done = complete_request(
        db,
        DRAFT,
        request["id"],
        attempt=claim["attempt"],
        result={"draft": "for the old plan"},
        completion={"plan_request_id": old_plan, "step_index": 0, "reminder_text": "the old plan's step"},
    )

    assert done == {"completed": True, "reminders_updated": 0}
    assert reminders(sql, lead) == current


def test_a_step_index_the_plan_does_not_have_fails_the_request_at_once(
    db: PostgresDatabase, sql: Sql, lead: Row
) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=7)
    generator = RecordingDrafts()

    outcome = draft(db, request, generator)

    steps = len(reminders(sql, lead))
    reason = (
        f"step_index 7 is not a step of the lead's current plan, which has {steps} steps"
        f" (step_index 0 to {steps - 1})"
    )
    assert outcome == RequestOutcome(str(request["id"]), "failed", reason)
    row = request_row(sql, request["id"], DRAFT.table)
    assert (row["status"], row["error"], row["attempts"]) == ("failed", reason, 1)
    assert generator.inputs == []


def test_a_lead_without_a_plan_fails_the_request_at_once(db: PostgresDatabase, sql: Sql, lead: Row) -> None:
    request = insert_request(sql, DRAFT, lead, step_index=0)
    generator = RecordingDrafts()

    outcome = draft(db, request, generator)

    assert outcome.reason == "the lead has no plan yet: make a plan before drafting step_index 0"
    assert request_row(sql, request["id"], DRAFT.table)["status"] == "failed"
    assert generator.inputs == []


@pytest.mark.parametrize(
    ("proof_url", "complaint"),
    [
        ("http://project.supabase.co/storage/v1/object/chat.png", "proof_url must be an https URL"),
        ("https://evil.example/chat.png", "proof_url host 'evil.example' is not allowed"),
        ("https://project.supabase.co/" + "a" * 2100, "at most 2,048 are accepted"),
    ],
    ids=["http", "other-host", "too-long"],
)
def test_a_bad_proof_url_fails_the_request_before_any_llm_call(
    db: PostgresDatabase, sql: Sql, lead: Row, proof_url: str, complaint: str
) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=0, proof_url=proof_url)
    generator = RecordingDrafts()

    outcome = draft(db, request, generator)

    assert outcome.outcome == "failed" and outcome.reason is not None and complaint in outcome.reason
    row = request_row(sql, request["id"], DRAFT.table)
    assert (row["status"], row["error"]) == ("failed", outcome.reason)
    assert generator.inputs == []


def test_an_allowed_proof_url_reaches_the_generator(db: PostgresDatabase, sql: Sql, lead: Row) -> None:
    url = "https://project.supabase.co/storage/v1/object/public/proofs/chat.png"
    request = ready_request(sql, db, DRAFT, lead, step_index=0, proof_url=url)
    generator = RecordingDrafts()

    assert draft(db, request, generator).outcome == "completed"
    assert generator.inputs[0].proof_url == url


def test_a_lead_has_at_most_one_active_draft_per_step(
    db: PostgresDatabase, sql: Sql, lead: Row, make_lead: Callable[..., Row]
) -> None:
    first = ready_request(sql, db, DRAFT, lead, step_index=0)
    with pytest.raises(psycopg.errors.UniqueViolation):
        insert_request(sql, DRAFT, lead, step_index=0)
    insert_request(sql, DRAFT, lead, step_index=1)  # another step of the same lead
    insert_request(sql, DRAFT, make_lead(telegram_id=2), step_index=0)  # the same step of another lead
    assert draft(db, first).outcome == "completed"
    assert insert_request(sql, DRAFT, lead, step_index=0)["status"] == "pending"  # once the first finished


@pytest.mark.parametrize(
    "columns",
    [{"step_index": -1}, {"step_index": 0, "instructions": "x" * 2001}, {"step_index": None}],
    ids=["negative-step", "long-instructions", "no-step"],
)
def test_the_table_refuses_a_draft_request_that_can_never_be_valid(
    sql: Sql, lead: Row, columns: dict[str, Any]
) -> None:
    with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation)):
        insert_request(sql, DRAFT, lead, **columns)


def test_instructions_of_2000_characters_are_taken(db: PostgresDatabase, sql: Sql, lead: Row) -> None:
    request = ready_request(sql, db, DRAFT, lead, step_index=0, instructions="x" * 2000)
    generator = RecordingDrafts()
    assert draft(db, request, generator).outcome == "completed"
    assert len(generator.inputs[0].instructions) == 2000


@pytest.mark.parametrize(
    ("completion", "message"),
    [
        (
            {"plan_request_id": None, "step_index": 0, "reminder_text": " "},
            "reminder_text must be a non-empty text",
        ),
        (
            {"plan_request_id": None, "step_index": 3, "reminder_text": "x"},
            "must be the request's step_index",
        ),
    ],
)
def test_a_malformed_draft_completion_is_refused_and_changes_nothing(
    db: PostgresDatabase, sql: Sql, lead: Row, completion: dict[str, Any], message: str
) -> None:
    request = insert_request(sql, DRAFT, lead, step_index=0)
    attempt = claimed_attempt(db, DRAFT, request["id"])
    before = request_row(sql, request["id"], DRAFT.table)
    with pytest.raises(DatabaseError, match=message) as refused:
        complete_request(
            db, DRAFT, request["id"], attempt=attempt, result={"draft": {}}, completion=completion
        )
    assert refused.value.sqlstate == "22023"
    assert request_row(sql, request["id"], DRAFT.table) == before
