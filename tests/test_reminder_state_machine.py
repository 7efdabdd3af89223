"""The reminders state machine: batch claims with SKIP LOCKED, leases, fenced outcomes, the local outbox."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]
Plan = Callable[..., list[str]]


@pytest.fixture
def plan(db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest) -> Plan:
    """Complete a plan request for a new lead with reminders due `days` from now; returns their ids."""

    def make(
        steps: int = 1, *, telegram_id: int = 1001, days: float = -1, text: str = "Call Ada"
    ) -> list[str]:
        lead = make_lead(telegram_id=telegram_id, company="Analytical Engines")
        request = make_request(lead)
        attempt = db.call(
            "planbus_claim_request", p_request_id=str(request["id"]), p_lease_seconds=60, p_max_attempts=3
        )["attempt"]
        due = datetime.now(UTC) + timedelta(days=days)
        reminders = [
            {"step_index": s, "due_at": (due + timedelta(minutes=s)).isoformat(), "text": f"{text} ({s})"}
            for s in range(steps)
        ]
        db.call(
            "planbus_complete_request",
            p_request_id=str(request["id"]),
            p_attempt=attempt,
            p_result={"plan": {}},
            p_plan={},
            p_reminders=reminders,
        )
        rows = sql.execute(
            "SELECT id FROM reminders WHERE plan_request_id = %s ORDER BY step_index", [request["id"]]
        ).fetchall()
        return [str(r["id"]) for r in rows]

    return make


def claim(db: PostgresDatabase, limit: int = 10, lease: int = 60) -> list[dict[str, Any]]:
    claimed: list[dict[str, Any]] = db.call(
        "planbus_claim_due_reminders", p_limit=limit, p_lease_seconds=lease
    )
    return claimed


def reminder(sql: Conn, reminder_id: str) -> Row:
    found = sql.execute("SELECT * FROM reminders WHERE id = %s", [reminder_id]).fetchone()
    assert found is not None
    return found


def expire(sql: Conn, reminder_id: str) -> None:
    sql.execute(
        "UPDATE reminders SET lease_expires_at = now() - interval '1 second' WHERE id = %s", [reminder_id]
    )


def test_due_reminders_are_claimed_with_what_the_message_needs(
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [due] = plan(1, telegram_id=555)
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
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    plan(1, telegram_id=1, days=1)
    [cancelled] = plan(1, telegram_id=2)
    db.call(
        "planbus_cancel_lead_reminders", p_lead_id=str(reminder(sql, cancelled)["lead_id"]), p_reason="lost"
    )
    [sent] = plan(1, telegram_id=3)
    [only] = claim(db)
    assert only["id"] == sent
    db.call("planbus_mark_reminder_sent", p_reminder_id=sent, p_attempt=1, p_via="telegram", p_message="hi")
    assert claim(db) == []


def test_claims_come_in_batches_oldest_first_and_a_leased_reminder_is_not_claimed_twice(
    db: PostgresDatabase, plan: Plan
) -> None:
    # One reminder per chat: a claim may take only one message per chat at a time (Telegram's limit).
    ids = [plan(1, telegram_id=n, days=-1 + n / 1440)[0] for n in range(1, 6)]
    first = claim(db, limit=2)
    second = claim(db, limit=10)
    assert [r["id"] for r in first] == ids[:2]
    assert [r["id"] for r in second] == ids[2:]
    assert claim(db) == []


def test_concurrent_claimers_never_share_a_reminder(database_url: str, plan: Plan) -> None:
    # One reminder per chat, so every one of them is claimable at once.
    everything = {plan(1, telegram_id=100 + n)[0] for n in range(60)}
    claimers = 4
    barrier = threading.Barrier(claimers)
    taken: list[list[str]] = [[] for _ in range(claimers)]

    def take(slot: int) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            while True:
                batch = conn.execute(
                    "SELECT planbus_claim_due_reminders(p_limit => 7, p_lease_seconds => 60)"
                ).fetchone()[0]  # type: ignore[index]
                if not batch:
                    return
                taken[slot].extend(r["id"] for r in batch)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    all_taken = [rid for batch in taken for rid in batch]
    assert len(all_taken) == len(set(all_taken)) == len(everything)
    assert set(all_taken) == everything


def test_an_expired_lease_is_claimed_again_and_the_old_sender_can_no_longer_record(
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
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


def test_a_reminder_sent_over_telegram_is_recorded_as_such(
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
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
    db: PostgresDatabase, sql: Conn, database_url: str, plan: Plan
) -> None:
    [rid] = plan(1, telegram_id=777)
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
    db: PostgresDatabase, sql: Conn, database_url: str, plan: Plan
) -> None:
    [rid] = plan(1)
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
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
    claim(db)
    db.call("planbus_mark_reminder_sent", p_reminder_id=rid, p_attempt=1, p_via="outbox", p_message=None)
    assert sql.execute("SELECT text FROM planbus_private.telegram_outbox").fetchone() == {
        "text": "Call Ada (0)"
    }


def test_an_unknown_delivery_channel_is_refused_and_changes_nothing(
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
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
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
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
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
    for _ in range(5):
        [claimed] = claim(db)
        assert claimed["attempt"] == 1
        assert retry(db, rid, 1, counts=False, max_attempts=1)["status"] == "scheduled"
        sql.execute("UPDATE reminders SET due_at = now() - interval '1 second' WHERE id = %s", [rid])
    assert reminder(sql, rid)["attempts"] == 0


def test_a_sender_taken_over_stays_fenced_after_the_next_one_gives_its_attempt_back(
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    [rid] = plan(1)
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


def test_a_permanently_failed_reminder_keeps_its_reason(db: PostgresDatabase, sql: Conn, plan: Plan) -> None:
    [rid] = plan(1)
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
    db: PostgresDatabase, sql: Conn, plan: Plan
) -> None:
    mine = plan(3, telegram_id=1, days=1)
    theirs = plan(2, telegram_id=2, days=1)
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
