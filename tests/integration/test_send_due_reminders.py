"""send_due_reminders, the use case: each Telegram answer ends in the right state, and nothing is lost.

Real PostgreSQL; Telegram faked at the HTTP transport with respx, asserting the chat and text sent.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
import respx

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import ConfigurationError
from planbus.models import LeadFacts, Plan
from planbus.planning import reminder_text
from planbus.services.reminders import reminder_message, send_due_reminders
from planbus.settings import Settings
from planbus.telegram import OutboxSender, TelegramSender
from support.concurrency import run_together
from support.openai_fakes import VALID_PLAN
from support.reminder_rows import (
    BASE,
    SEND_URL,
    TOKEN,
    Sql,
    add_plan,
    fast_sender,
    ok,
    refusal,
    reminder,
    sent_messages,
)


def test_429_reschedules_after_retry_after_without_an_attempt_and_the_rest_of_the_batch_backs_off(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql
) -> None:
    route = telegram.post(SEND_URL).mock(
        return_value=refusal(429, "Too Many Requests: retry after 30", retry_after=30)
    )
    ids = [add_plan(sql, telegram_id=5000 + i)["reminders"][0]["id"] for i in range(10)]
    # Slots 100 ms apart: the first 429 arrives long before most of the batch has had its turn.
    sender = TelegramSender(TOKEN, api_base=BASE, per_second=10, chat_interval=0)

    counts = send_due_reminders(db, sender, SystemClock(), settings=Settings())

    tried = route.call_count
    assert 1 <= tried < 10
    # Each reminder counted once: tried and rescheduled, or handed back untried.
    assert counts.as_json() == {"sent": 0, "failed": 0, "retried": tried, "deferred": 10 - tried}
    now = datetime.now(UTC)
    for reminder_id in ids:
        row = reminder(sql, reminder_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("scheduled", 0, None)
        assert now + timedelta(seconds=25) < row["due_at"] <= now + timedelta(seconds=30)
        assert "Too Many Requests" in row["error"]


@pytest.mark.parametrize(
    ("status", "description"),
    [
        (403, "Forbidden: bot was blocked by the user"),
        (403, "Forbidden: user is deactivated"),
        (400, "Bad Request: chat not found"),
    ],
)
def test_a_refused_chat_fails_the_reminder_for_good_with_telegrams_reason(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, status: int, description: str
) -> None:
    route = telegram.post(SEND_URL).mock(return_value=refusal(status, description))
    [row] = add_plan(sql, telegram_id=4321)["reminders"]

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert [chat for chat, _ in sent_messages(route)] == [4321]
    assert (counts.failed, counts.retried, counts.sent) == (1, 0, 0)
    after = reminder(sql, row["id"])
    assert (after["status"], after["attempts"], after["sent_at"]) == ("failed", 1, None)
    assert after["error"] == f"Telegram {status}: {description}"


@pytest.mark.parametrize(
    ("side_effect", "reason"),
    [
        (refusal(500, "Internal Server Error"), "Telegram 500: Internal Server Error"),
        (httpx.ConnectError("connection refused"), "Telegram unreachable: ConnectError: connection refused"),
    ],
)
def test_a_server_or_network_error_is_retried_later_with_backoff_using_an_attempt(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, side_effect: Any, reason: str
) -> None:
    telegram.post(SEND_URL).mock(side_effect=[side_effect])
    [row] = add_plan(sql)["reminders"]

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert (counts.retried, counts.failed, counts.sent) == (1, 0, 0)
    after = reminder(sql, row["id"])
    assert (after["status"], after["attempts"], after["error"]) == ("scheduled", 1, reason)
    now = datetime.now(UTC)
    assert now + timedelta(seconds=25) < after["due_at"] < now + timedelta(seconds=34)


def test_a_reminder_that_keeps_failing_fails_after_the_last_attempt_with_the_reason(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql
) -> None:
    telegram.post(SEND_URL).mock(return_value=refusal(502, "Bad Gateway"))
    [row] = add_plan(sql)["reminders"]
    sql.execute("UPDATE reminders SET attempts = 4 WHERE id = %s", (row["id"],))

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings(reminder_max_attempts=5))

    assert counts.failed == 1
    after = reminder(sql, row["id"])
    assert (after["status"], after["attempts"]) == ("failed", 5)
    assert after["error"] == "gave up after 5 attempts: Telegram 502: Bad Gateway"


def test_a_rejected_bot_token_stops_the_call_and_gives_every_reminder_back(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql
) -> None:
    telegram.post(SEND_URL).mock(return_value=refusal(401, "Unauthorized"))
    ids = [add_plan(sql, telegram_id=6000 + i)["reminders"][0]["id"] for i in range(3)]

    with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN"):
        send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    for reminder_id in ids:
        row = reminder(sql, reminder_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("scheduled", 0, None)


def test_two_concurrent_calls_never_send_the_same_reminder(
    database_url: str, telegram: respx.MockRouter, sql: Sql
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    for i in range(40):
        add_plan(sql, telegram_id=8000 + i, steps=(("first", -60), ("second", -30)))

    def send(db: PostgresDatabase) -> int:
        return send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings()).sent

    callers = [PostgresDatabase(database_url) for _ in range(2)]
    try:
        results = run_together([partial(send, db) for db in callers])
    finally:
        for db in callers:
            db.close()

    messages = sent_messages(route)
    assert len(messages) == len(set(messages)) == 80
    assert sum(results) == 80
    # Each chat got its first step before its second.
    for chat in range(8000, 8040):
        steps = [text.removeprefix("Reminder: ") for c, text in messages if c == chat]
        assert steps == ["first", "second"]


class SteppingClock:
    """Each reading is `step` later than the one before, so the budget runs out after a known number."""

    def __init__(self, step: timedelta) -> None:
        self.at = datetime.now(UTC)
        self.step = step
        self.lock = threading.Lock()

    def now(self) -> datetime:
        with self.lock:
            self.at += self.step
            return self.at


def test_reminders_left_when_the_time_budget_runs_out_go_back_unsent_without_an_attempt(
    db: PostgresDatabase, sql: Sql
) -> None:
    ids = [add_plan(sql, telegram_id=9000 + i)["reminders"][0]["id"] for i in range(5)]
    # Readings: the start, the claim loop, then one per reminder: only one reminder is inside 25 s.
    clock = SteppingClock(timedelta(seconds=10))

    counts = send_due_reminders(db, OutboxSender(), clock, settings=Settings(function_budget_seconds=25))

    assert (counts.sent, counts.deferred) == (1, 4)
    rows = [reminder(sql, reminder_id) for reminder_id in ids]
    assert sorted(r["status"] for r in rows) == ["scheduled"] * 4 + ["sent"]
    assert all(
        r["attempts"] == 0 and r["lease_expires_at"] is None for r in rows if r["status"] == "scheduled"
    )


def test_limit_bounds_how_many_reminders_one_call_takes(db: PostgresDatabase, sql: Sql) -> None:
    for i in range(5):
        add_plan(sql, telegram_id=9100 + i)
    counts = send_due_reminders(db, OutboxSender(), SystemClock(), settings=Settings(), limit=3)
    assert counts.sent == 3
    statuses = sql.execute("SELECT status, count(*) AS n FROM reminders GROUP BY status ORDER BY status")
    assert statuses.fetchall() == [{"status": "scheduled", "n": 2}, {"status": "sent", "n": 3}]


def test_a_message_says_the_step_the_lead_and_the_channel_once_and_fits_telegrams_limit() -> None:
    lead = LeadFacts(id=uuid.uuid4(), full_name="Ada Lovelace", company="Analytical Engines")
    text = reminder_text(Plan.model_validate(VALID_PLAN).steps[0], lead, number=1, total=3)
    base = {"lead_name": "Ada Lovelace", "company": "Analytical Engines", "step_index": 0, "text": text}
    assert reminder_message(base) == (
        "Reminder: Step 1 of 3 for Ada Lovelace (Analytical Engines) · Telegram\n"
        "Send Ada a short note about the engine demo\n"
        "Goal: Get a reply\n"
        "\n"
        "Draft:\n"
        "Hi Ada, loved your notes on the engine. Could we talk this week?"
    )
    long = reminder_message({**base, "text": "x" * 10_000})
    assert len(long) == 4096
    assert long.endswith("…")
