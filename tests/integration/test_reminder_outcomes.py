"""Outcomes of a claimed reminder: sent (Telegram or the local outbox), retried, failed, cancelled."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from support.reminder_rows import MakePlan, Sql, claim, expire, reminder


def test_a_reminder_sent_over_telegram_is_recorded_as_such(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    answer = db.call(
        "planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="telegram", p_message="x"
    )
    assert answer == {"recorded": True, "status": "sent"}
    stored = reminder(sql, rid)
    assert (stored["status"], stored["delivered_via"], stored["lease_expires_at"]) == (
        "sent",
        "telegram",
        None,
    )
    assert stored["sent_at"] is not None
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.telegram_outbox").fetchone() == {"n": 0}


def test_a_reminder_delivered_to_the_outbox_is_kept_and_announced(
    db: PostgresDatabase, sql: Sql, database_url: str, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1, telegram_id=777)
    claim(db)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN planbus_outbox")
        db.call(
            "planbus_mark_reminder_sent",
            p_reminder_id=rid,
            p_attempt=1,
            p_via="outbox",
            p_message="Ada: call today",
        )
        [note] = list(listener.notifies(timeout=5, stop_after=1))
    [kept] = sql.execute("SELECT * FROM planbus_private.telegram_outbox").fetchall()
    assert (str(kept["reminder_id"]), kept["chat_id"], kept["text"]) == (rid, 777, "Ada: call today")
    assert json.loads(note.payload) == {
        "id": kept["id"],
        "reminder_id": rid,
        "chat_id": 777,
        "text": "Ada: call today",
        "truncated": False,
    }
    assert reminder(sql, rid)["delivered_via"] == "outbox"


def test_a_long_outbox_message_is_kept_whole_and_announced_shortened(
    db: PostgresDatabase, sql: Sql, database_url: str, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    message = "Позвонить Аде и обсудить план. " * 150  # about 9 KB of UTF-8: over NOTIFY's limit
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN planbus_outbox")
        db.call(
            "planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="outbox", p_message=message
        )
        [note] = list(listener.notifies(timeout=5, stop_after=1))
    announced = json.loads(note.payload)
    assert announced["truncated"] is True
    assert message.startswith(announced["text"]) and 0 < len(announced["text"]) < len(message)
    assert sql.execute("SELECT text FROM planbus_private.telegram_outbox").fetchone() == {"text": message}


def test_an_outbox_delivery_without_a_message_keeps_the_reminder_text(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    db.call("planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="outbox", p_message=None)
    assert sql.execute("SELECT text FROM planbus_private.telegram_outbox").fetchone() == {
        "text": "Call Ada (0)"
    }


def test_an_unknown_delivery_channel_is_refused_and_changes_nothing(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    with pytest.raises(DatabaseError, match="p_via must be 'telegram' or 'outbox'") as refused:
        db.call("planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="email", p_message="x")
    assert refused.value.sqlstate == "22023"
    assert reminder(sql, rid)["status"] == "sending"


def retry(db: PostgresDatabase, rid: str, attempt: int, *, counts: bool, max_attempts: int = 3) -> Any:
    return db.call(
        "planbus_retry_reminder",
        p_reminder_id=rid,
        p_attempt=attempt,
        p_delay_seconds=30,
        p_error="Telegram answered 502",
        p_max_attempts=max_attempts,
        p_counts_as_attempt=counts,
    )


def test_a_retried_reminder_waits_its_delay_and_fails_after_max_attempts(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    for attempt in (1, 2):
        [claimed] = claim(db)
        assert claimed["attempt"] == attempt
        answer = retry(db, rid, attempt, counts=True)
        assert answer["status"] == "scheduled"
        stored = reminder(sql, rid)
        assert stored["due_at"] - stored["updated_at"] == timedelta(seconds=30)
        assert claim(db) == []
        sql.execute("UPDATE reminders SET due_at = now() - interval '1 second' WHERE id = %s", [rid])
    claim(db)
    answer = retry(db, rid, 3, counts=True)
    assert (answer["status"], answer["error"]) == (
        "failed",
        "gave up after 3 attempts: Telegram answered 502",
    )
    assert claim(db) == []


def test_a_rate_limited_reminder_gives_its_attempt_back_and_never_fails_for_it(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    for _ in range(5):
        [claimed] = claim(db)
        assert claimed["attempt"] == 1
        assert retry(db, rid, 1, counts=False, max_attempts=1)["status"] == "scheduled"
        sql.execute("UPDATE reminders SET due_at = now() - interval '1 second' WHERE id = %s", [rid])
    assert reminder(sql, rid)["attempts"] == 0


def test_a_sender_taken_over_stays_fenced_after_the_next_one_gives_its_attempt_back(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)  # sender A: attempt 1, then freezes
    expire(sql, rid)
    assert claim(db)[0]["attempt"] == 2  # sender B
    retry(db, rid, 2, counts=False)  # B was rate limited: attempts back to 1, scheduled
    sql.execute("UPDATE reminders SET due_at = now() - interval '1 second' WHERE id = %s", [rid])
    assert claim(db)[0]["attempt"] == 2  # sender C
    late = db.call(
        "planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="telegram", p_message="x"
    )
    assert late["recorded"] is False
    assert reminder(sql, rid)["status"] == "sending"


def test_a_permanently_failed_reminder_keeps_its_reason(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    with pytest.raises(DatabaseError, match="p_error must be a non-empty reason"):
        db.call("planbus_fail_reminder", p_reminder_id=rid, p_attempt=1, p_error=" ")
    answer = db.call(
        "planbus_fail_reminder", p_reminder_id=rid, p_attempt=1, p_error="bot was blocked by the user"
    )
    assert answer == {"recorded": True, "status": "failed"}
    stored = reminder(sql, rid)
    assert (stored["status"], stored["error"], stored["lease_expires_at"]) == (
        "failed",
        "bot was blocked by the user",
        None,
    )


def test_cancelling_a_leads_reminders_leaves_other_leads_and_sent_ones_alone(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    mine = make_plan(3, telegram_id=1, days=1)
    theirs = make_plan(2, telegram_id=2, days=1)
    sql.execute(
        "UPDATE reminders SET status = 'sent', delivered_via = 'telegram', sent_at = now() WHERE id = %s",
        [mine[0]],
    )
    lead_id = reminder(sql, mine[0])["lead_id"]
    assert db.call("planbus_cancel_lead_reminders", p_lead_id=str(lead_id), p_reason="lead closed") == {
        "cancelled": 2
    }
    assert [reminder(sql, r)["status"] for r in mine] == ["sent", "cancelled", "cancelled"]
    assert reminder(sql, mine[1])["error"] == "lead closed"
    assert [reminder(sql, r)["status"] for r in theirs] == ["scheduled", "scheduled"]
