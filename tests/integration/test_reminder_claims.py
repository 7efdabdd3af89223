"""The reminder claim: replaced and cancelled plans are never sent, one chat at a time."""

from __future__ import annotations

import pytest
import respx

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.services.reminders import reminder_message, send_due_reminders
from planbus.settings import Settings
from support.reminder_rows import (
    SEND_URL,
    MakePlan,
    Sql,
    add_plan,
    claim,
    expire,
    fast_sender,
    ok,
    reminder,
    sent_messages,
)


def test_reminders_of_a_replaced_plan_are_cancelled_not_sent(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    old = add_plan(sql, steps=(("Old step, in flight", -60), ("Old step, back after a retry", -30)))
    in_flight, retried = old["reminders"]
    # Both were in flight when a newer plan was completed, which cancels only scheduled reminders. Since
    # then one came back to 'scheduled' after a failed attempt; the other's sender died and its lease ran out.
    assert [r["id"] for r in claim(db, limit=30)] == [str(in_flight["id"])]
    expire(sql, in_flight["id"])
    new = add_plan(sql, lead=old["lead"], steps=(("New step", -1),))

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert counts.sent == 1
    expected = reminder_message(
        {**new["reminders"][0], "lead_name": "Ada Lovelace", "company": "Analytical Engines"}
    )
    assert sent_messages(route) == [(1001, expected)]
    for replaced in (in_flight, retried):
        row = reminder(sql, replaced["id"])
        assert (row["status"], row["lease_expires_at"]) == ("cancelled", None)
        assert row["error"] == f"superseded by plan request {new['request']['id']}"


def test_a_cancelled_in_flight_reminder_cannot_be_put_back_by_its_sender(
    db: PostgresDatabase, sql: Sql
) -> None:
    plan = add_plan(sql)
    [claimed] = claim(db, limit=30)
    cancelled = db.call("planbus_cancel_lead_reminders", p_lead_id=plan["lead"]["id"], p_reason="lead closed")
    assert cancelled == {"cancelled": 1}

    answer = db.call(
        "planbus_retry_reminder",
        p_reminder_id=claimed["id"],
        p_attempt=claimed["attempt"],
        p_delay_seconds=0,
        p_error="Telegram 500",
        p_max_attempts=5,
        p_counts_as_attempt=True,
    )

    assert answer["recorded"] is False
    row = reminder(sql, claimed["id"])
    assert (row["status"], row["error"], row["lease_expires_at"]) == ("cancelled", "lead closed", None)


def test_a_claim_takes_one_reminder_per_chat_the_earliest_first(db: PostgresDatabase, sql: Sql) -> None:
    busy = add_plan(sql, telegram_id=1, steps=(("b0", -300), ("b1", -200), ("b2", -100)))
    quiet = add_plan(sql, telegram_id=2, full_name="Grace Hopper", steps=(("q0", -50),))

    first = claim(db, limit=30)

    assert {r["id"] for r in first} == {str(busy["reminders"][0]["id"]), str(quiet["reminders"][0]["id"])}


def test_a_chat_with_a_reminder_in_flight_gets_no_other_until_it_is_recorded(
    db: PostgresDatabase, sql: Sql
) -> None:
    busy = add_plan(sql, telegram_id=1, steps=(("b0", -300), ("b1", -200)))
    [held] = claim(db, limit=30)
    assert claim(db, limit=30) == []

    db.call(
        "planbus_mark_reminder_sent",
        p_reminder_id=held["id"],
        p_attempt=held["attempt"],
        p_via="telegram",
        p_message="b0",
    )

    assert [r["id"] for r in claim(db, limit=30)] == [str(busy["reminders"][1]["id"])]


def test_a_claim_with_nonsense_arguments_is_refused(db: PostgresDatabase, sql: Sql) -> None:
    [row] = add_plan(sql)["reminders"]
    for limit, lease in ((0, 60), (10, 0)):
        with pytest.raises(DatabaseError) as caught:
            db.call("planbus_claim_due_reminders", p_limit=limit, p_lease_seconds=lease)
        assert caught.value.sqlstate == "22023"
    assert reminder(sql, row["id"]) == row


def test_a_reminder_whose_sending_never_finishes_fails_after_max_attempts(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [reminder_id] = make_plan(steps=1)
    for attempt in (1, 2):
        [claimed] = db.call("planbus_claim_due_reminders", p_limit=5, p_lease_seconds=60, p_max_attempts=2)
        assert claimed["attempt"] == attempt
        # The sender dies: its lease runs out with the reminder still in flight.
        expire(sql, reminder_id)
    assert db.call("planbus_claim_due_reminders", p_limit=5, p_lease_seconds=60, p_max_attempts=2) == []
    row = sql.execute(
        "SELECT status, attempts, error FROM reminders WHERE id = %s", (reminder_id,)
    ).fetchone()
    assert row is not None
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert "gave up after 2 attempts" in row["error"]
