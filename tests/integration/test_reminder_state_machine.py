"""The reminders state machine: due reminders claimed in batches with SKIP LOCKED, under a lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg

from planbus.db.postgres import PostgresDatabase
from support.concurrency import connections, run_together
from support.reminder_rows import MakePlan, Sql, claim, expire, reminder


def test_due_reminders_are_claimed_with_what_the_message_needs(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [due] = make_plan(1, telegram_id=555)
    [claimed] = claim(db)
    assert claimed["id"] == due
    assert claimed["attempt"] == 1
    assert claimed["chat_id"] == 555
    assert (claimed["lead_name"], claimed["company"], claimed["step_index"]) == (
        "Ada Lovelace",
        "Analytical Engines",
        0,
    )
    assert claimed["text"] == "Call Ada (0)"
    stored = reminder(sql, due)
    assert (stored["status"], stored["attempts"]) == ("sending", 1)
    assert stored["lease_expires_at"] > datetime.now(UTC) + timedelta(seconds=50)


def test_future_cancelled_and_sent_reminders_are_not_claimed(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    make_plan(1, telegram_id=1, days=1)
    [cancelled] = make_plan(1, telegram_id=2)
    db.call(
        "planbus_cancel_lead_reminders", p_lead_id=str(reminder(sql, cancelled)["lead_id"]), p_reason="lost"
    )
    [sent] = make_plan(1, telegram_id=3)
    [only] = claim(db)
    assert only["id"] == sent
    db.call("planbus_mark_reminder_sent", p_reminder_id=sent, p_attempt=1, p_via="telegram", p_message="hi")
    assert claim(db) == []


def test_claims_come_in_batches_oldest_first_and_a_leased_reminder_is_not_claimed_twice(
    db: PostgresDatabase, make_plan: MakePlan
) -> None:
    # One reminder per chat: a claim may take only one message per chat at a time (Telegram's limit).
    ids = [make_plan(1, telegram_id=n, days=-1 + n / 1440)[0] for n in range(1, 6)]
    first = claim(db, limit=2)
    second = claim(db, limit=10)
    assert [r["id"] for r in first] == ids[:2]
    assert [r["id"] for r in second] == ids[2:]
    assert claim(db) == []


def test_concurrent_claimers_never_share_a_reminder(database_url: str, make_plan: MakePlan) -> None:
    # One reminder per chat, so every one of them is claimable at once.
    everything = {make_plan(1, telegram_id=100 + n)[0] for n in range(60)}
    claimers = 4

    def take(conn: psycopg.Connection[Any]) -> list[str]:
        taken: list[str] = []
        while True:
            row = conn.execute(
                "SELECT planbus_claim_due_reminders(p_limit => 7, p_lease_seconds => 60)"
            ).fetchone()
            assert row is not None
            if not row[0]:
                return taken
            taken.extend(r["id"] for r in row[0])

    with connections(database_url, claimers, autocommit=True) as conns:
        taken = run_together([partial(take, conn) for conn in conns])
    all_taken = [rid for batch in taken for rid in batch]
    assert len(all_taken) == len(set(all_taken)) == len(everything)
    assert set(all_taken) == everything


def test_an_expired_lease_is_claimed_again_and_the_old_sender_can_no_longer_record(
    db: PostgresDatabase, sql: Sql, make_plan: MakePlan
) -> None:
    [rid] = make_plan(1)
    claim(db)
    expire(sql, rid)
    [again] = claim(db)
    assert again["attempt"] == 2
    stale = {"p_reminder_id": rid, "p_attempt": 1}
    assert (
        db.call("planbus_mark_reminder_sent", **stale, p_via="telegram", p_message="hi")["recorded"] is False
    )
    assert db.call("planbus_fail_reminder", **stale, p_error="blocked")["recorded"] is False
    assert (
        db.call(
            "planbus_retry_reminder",
            **stale,
            p_delay_seconds=5,
            p_error="500",
            p_max_attempts=5,
            p_counts_as_attempt=True,
        )["recorded"]
        is False
    )
    assert (reminder(sql, rid)["status"], reminder(sql, rid)["attempts"]) == ("sending", 2)
