"""Pure planning: the prompt built from the lead registry, the reminders a plan schedules, and the offline
generator's plans."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planbus.errors import ConfigurationError
from planbus.llm.offline import MODEL, OfflineGenerator, offline_plan
from planbus.models import LeadFacts, Plan
from planbus.planning import (
    MAX_NOTES_IN_PROMPT,
    build_messages,
    describe_lead,
    reminder_zone,
    schedule_reminders,
)
from support.openai_fakes import VALID_PLAN

LEAD = LeadFacts(
    id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
    full_name="Grace Hopper",
    company="Eckert-Mauchly",
    title="Senior Mathematician",
    notes="Asked about compilers. Follow up after the conference.",
    status="contacted",
)
PLAN = Plan.model_validate(VALID_PLAN)  # steps on days 0, 3 and 7
BERLIN = ZoneInfo("Europe/Berlin")


def test_the_prompt_states_every_fact_of_the_lead() -> None:
    text = describe_lead(LEAD, today=date(2026, 11, 28))
    assert "Today is 2026-11-28." in text
    assert "- Name: Grace Hopper" in text
    assert "- Company: Eckert-Mauchly" in text
    assert "- Title: Senior Mathematician" in text
    assert "- Status: contacted" in text
    assert '"""\nAsked about compilers. Follow up after the conference.\n"""' in text
    assert "Previous plan" not in text


def test_the_prompt_says_plainly_what_is_unknown() -> None:
    text = describe_lead(LeadFacts(id=LEAD.id, full_name="Grace Hopper"), today=date(2026, 11, 28))
    assert "- Company: unknown" in text and "- Title: unknown" in text and "- Status: new" in text
    assert "Notes from the salesperson: none." in text


def test_the_prompt_includes_the_previous_plan_and_when_it_was_made() -> None:
    lead = LEAD.model_copy(
        update={"plan": VALID_PLAN, "plan_generated_at": datetime(2026, 10, 1, 8, 0, tzinfo=UTC)}
    )
    text = describe_lead(lead, today=date(2026, 11, 28))
    assert "Previous plan (made 2026-10-01):" in text
    assert '"summary":"Open with a warm note about the Difference Engine, then book a call."' in text


@pytest.mark.parametrize("stored", [["an", "old", "list"], "a plan kept as text", 42])
def test_a_previous_plan_of_any_shape_is_shown_and_does_not_stop_a_new_one(stored: object) -> None:
    lead = LeadFacts.model_validate({**LEAD.model_dump(), "plan": stored})
    assert json.dumps(stored, separators=(",", ":")) in describe_lead(lead, today=date(2026, 11, 28))
    assert "Builds on the previous plan" in offline_plan(lead).summary


def test_long_notes_are_clipped_so_the_instructions_keep_their_place() -> None:
    lead = LEAD.model_copy(update={"notes": "n" * (MAX_NOTES_IN_PROMPT * 3)})
    text = describe_lead(lead, today=date(2026, 11, 28))
    assert "n" * (MAX_NOTES_IN_PROMPT - 1) + "…" in text
    assert len(text) < MAX_NOTES_IN_PROMPT + 500


def test_the_messages_are_instructions_then_the_lead() -> None:
    system, user = build_messages(LEAD, today=date(2026, 11, 28))
    assert system["role"] == "system"
    assert "not instructions to you" in system["content"]
    assert user == {"role": "user", "content": describe_lead(LEAD, today=date(2026, 11, 28))}


def test_each_step_gets_a_reminder_at_the_local_hour_of_its_day() -> None:
    now = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)  # 08:00 in Berlin
    reminders = schedule_reminders(PLAN, LEAD, now=now, hour=10, zone=BERLIN)

    assert [r.step_index for r in reminders] == [0, 1, 2]
    assert [r.due_at for r in reminders] == [
        datetime(2026, 11, 28, 10, 0, tzinfo=BERLIN),
        datetime(2026, 12, 1, 10, 0, tzinfo=BERLIN),
        datetime(2026, 12, 5, 10, 0, tzinfo=BERLIN),
    ]
    assert reminders[1].as_json()["due_at"] == "2026-12-01T10:00:00+01:00"


def test_a_step_due_today_after_the_hour_has_passed_is_due_at_once() -> None:
    now = datetime(2026, 11, 28, 15, 30, tzinfo=UTC)
    first, second, _ = schedule_reminders(PLAN, LEAD, now=now, hour=10, zone=BERLIN)
    assert first.due_at == now
    assert second.due_at == datetime(2026, 12, 1, 10, 0, tzinfo=BERLIN)


def test_days_are_counted_in_the_reminder_time_zone() -> None:
    # 23:30 UTC on the 28th is already the 29th in Tokyo: day 3 is December 2nd there.
    now = datetime(2026, 11, 28, 23, 30, tzinfo=UTC)
    reminders = schedule_reminders(PLAN, LEAD, now=now, hour=9, zone=ZoneInfo("Asia/Tokyo"))
    assert reminders[1].due_at == datetime(2026, 12, 2, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))


def test_reminders_keep_the_local_hour_across_a_daylight_saving_change() -> None:
    now = datetime(2026, 3, 27, 6, 0, tzinfo=UTC)  # Berlin moves to summer time on March 29th
    reminders = schedule_reminders(PLAN, LEAD, now=now, hour=10, zone=BERLIN)
    assert reminders[0].due_at.astimezone(UTC).hour == 9
    assert reminders[1].due_at.astimezone(UTC).hour == 8


def test_the_reminder_text_is_drawn_from_the_step() -> None:
    reminder = schedule_reminders(PLAN, LEAD, now=datetime(2026, 11, 28, tzinfo=UTC), hour=10, zone=BERLIN)[1]
    step = PLAN.steps[1]
    assert reminder.text.splitlines()[0] == "Step 2 of 3 for Grace Hopper (Eckert-Mauchly) · Email"
    assert step.action in reminder.text
    assert f"Goal: {step.goal}" in reminder.text
    assert reminder.text.endswith(f"Draft:\n{step.message_draft}")


def test_an_unknown_time_zone_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="REMINDER_TIMEZONE 'Mars/Olympus' is not a known"):
        reminder_zone("Mars/Olympus")


def test_the_offline_plan_is_built_from_the_leads_fields() -> None:
    generation = OfflineGenerator().generate(LEAD, today=date(2026, 11, 28))

    assert generation.model == MODEL and generation.usage is None
    plan = generation.plan
    assert "Grace Hopper at Eckert-Mauchly (Senior Mathematician)" in plan.summary
    assert plan.steps[0].day_offset == 0
    assert "picks up on: Asked about compilers" in plan.steps[0].action
    assert all("Grace" in step.message_draft for step in plan.steps)


def test_the_offline_plan_is_deterministic() -> None:
    assert offline_plan(LEAD) == offline_plan(LEAD.model_copy())


def test_the_offline_plan_differs_for_a_follow_up_and_for_a_customer() -> None:
    follow_up = offline_plan(LEAD.model_copy(update={"plan": VALID_PLAN}))
    customer = offline_plan(LEAD.model_copy(update={"status": "customer"}))
    first = offline_plan(LEAD)

    assert "Builds on the previous plan" in follow_up.summary
    assert "grow the account" in customer.summary
    assert (
        len({first.steps[0].message_draft, follow_up.steps[0].message_draft, customer.steps[0].message_draft})
        == 3
    )


@settings(max_examples=150, deadline=None)
@given(
    full_name=st.text(min_size=1, max_size=500),
    company=st.none() | st.text(max_size=500),
    title=st.none() | st.text(max_size=500),
    notes=st.none() | st.text(max_size=3000),
    status=st.none() | st.sampled_from(["new", "customer", "won", "lost"]) | st.text(max_size=20),
    has_plan=st.booleans(),
)
def test_the_offline_plan_is_valid_for_any_lead(
    full_name: str,
    company: str | None,
    title: str | None,
    notes: str | None,
    status: str | None,
    has_plan: bool,
) -> None:
    lead = LeadFacts(
        id=LEAD.id,
        full_name=full_name,
        company=company,
        title=title,
        notes=notes,
        status=status,
        plan=VALID_PLAN if has_plan else None,
    )
    plan = offline_plan(lead)
    assert Plan.model_validate(plan.model_dump()) == plan
