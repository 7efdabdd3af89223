"""planbus status: the numbers of planbus_status() against arranged rows, the terminal and --json output,
the Supabase REST path, and planbus_reschedule_reminder."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import respx

from planbus.cli import main
from planbus.commands.status import age, limit_text, render
from planbus.db.postgres import PostgresDatabase
from planbus.kinds import PLAN
from support.request_kinds import claimed_attempt, complete_request
from support.request_rows import expire_lease

Row = dict[str, Any]
SQL = psycopg.Connection[dict[str, Any]]
RESULT = {"plan": {"summary": "s", "steps": []}}


def claim(db: PostgresDatabase, request: Row, lease: int = 300) -> int:
    return claimed_attempt(db, PLAN, request["id"], lease=lease)


def complete(db: PostgresDatabase, request: Row, reminders: list[dict[str, Any]] | None = None) -> None:
    completion = {"plan": RESULT["plan"], "reminders": reminders or []}
    answer = complete_request(db, PLAN, request["id"], result=RESULT, completion=completion)
    assert answer["completed"], answer


def fail(db: PostgresDatabase, request: Row, error: str, *, retryable: bool = False) -> None:
    attempt = claim(db, request)
    answer = db.call(
        "planbus_fail_request",
        p_kind="plan",
        p_request_id=request["id"],
        p_attempt=attempt,
        p_error=error,
        p_retryable=retryable,
        p_max_attempts=3,
    )
    assert answer["recorded"], answer


def reminder(step: int, due_in_minutes: float) -> dict[str, Any]:
    due = datetime.now(UTC) + timedelta(minutes=due_in_minutes)
    return {"step_index": step, "due_at": due.isoformat(), "text": f"step {step}"}


@pytest.fixture
def arranged(
    db: PostgresDatabase,
    sql: SQL,
    make_lead: Callable[..., Row],
    make_request: Callable[..., Row],
) -> Row:
    """A queue with a known number of rows in every state; returns the ids the assertions need."""
    now = datetime.now(UTC)
    old_pending = make_request(make_lead(full_name="Old"), created_at=now - timedelta(minutes=5))
    make_request(make_lead(full_name="New"))
    stale = make_request(make_lead(full_name="Stale"))
    claim(db, stale, lease=1)
    expire_lease(sql, stale["id"])
    claim(db, make_request(make_lead(full_name="Busy")), lease=300)
    fail(db, make_request(make_lead(full_name="Retrying")), "OpenAI timed out", retryable=True)
    for name in ("Refused A", "Refused B"):
        fail(db, make_request(make_lead(full_name=name)), "the model refused: policy")
    fail(db, make_request(make_lead(full_name="Invalid")), "invalid plan: steps out of order")

    # A failure from two days ago counts in the totals but not in the last 24 hours.
    ancient = make_request(make_lead(full_name="Ancient"))
    fail(db, ancient, "an old outage")
    sql.execute("ALTER TABLE public.plan_requests DISABLE TRIGGER plan_requests_touch")
    sql.execute(
        "UPDATE public.plan_requests SET updated_at = now() - interval '2 days', "
        "created_at = now() - interval '2 days' WHERE id = %s",
        (ancient["id"],),
    )
    sql.execute("ALTER TABLE public.plan_requests ENABLE TRIGGER plan_requests_touch")
    sql.execute(
        "UPDATE planbus_private.request_errors SET at = now() - interval '2 days' WHERE request_id = %s",
        (ancient["id"],),
    )

    # One reminder per chat, each taken to its state before the next is made due (a claim takes the
    # earliest due reminder of each chat).
    def planned(telegram_id: int, due_in_minutes: float) -> Row:
        lead = make_lead(telegram_id=telegram_id, full_name=f"Planned {telegram_id}")
        complete(db, make_request(lead), [reminder(0, due_in_minutes)])
        return lead

    def claim_one(lease: int = 300) -> Row:
        (claimed,) = db.call("planbus_claim_due_reminders", p_limit=10, p_lease_seconds=lease)
        row: Row = claimed
        return row

    planned(3001, -30)
    sent = claim_one()
    db.call(
        "planbus_mark_reminder_sent", p_reminder_id=sent["id"], p_attempt=1, p_via="outbox", p_message="hi"
    )
    planned(3002, -20)
    broken = claim_one()
    db.call(
        "planbus_fail_reminder",
        p_reminder_id=broken["id"],
        p_attempt=1,
        p_error="bot was blocked by the user",
    )
    planned(3003, -15)
    stuck = claim_one(lease=1)
    expire_lease(sql, stuck["id"], "reminders")
    planned(3004, -10)
    planned(3005, 60 * 24)

    cancelled_lead = make_lead(full_name="Cancelled")
    complete(db, make_request(cancelled_lead), [reminder(0, 60)])
    db.call("planbus_cancel_lead_reminders", p_lead_id=cancelled_lead["id"], p_reason="lead closed")
    return {"oldest_pending_id": str(old_pending["id"])}


def test_status_counts_every_request_state(db: PostgresDatabase, arranged: Row) -> None:
    requests = db.call("planbus_status")["requests"]
    assert {k: requests[k] for k in ("pending", "processing", "completed", "failed")} == {
        "pending": 3,  # old, new, and the one waiting to retry
        "processing": 2,
        "completed": 6,
        "failed": 4,
    }
    assert requests["stale"] == 1
    assert requests["waiting_retry"] == 1
    assert requests["created_24h"] == 14
    assert requests["oldest_pending_id"] == arranged["oldest_pending_id"]
    assert 300 <= requests["oldest_pending_seconds"] < 400


def test_status_reports_failures_of_the_last_day_with_the_most_common_first(
    db: PostgresDatabase, arranged: Row
) -> None:
    failures = db.call("planbus_status")["failures_24h"]
    assert failures["failed"] == 3
    assert failures["errors"] == 4  # three final failures and one retried timeout
    top = [(item["error"], item["count"]) for item in failures["top_errors"]]
    assert top[0] == ("the model refused: policy", 2)
    assert sorted(top[1:]) == [("OpenAI timed out", 1), ("invalid plan: steps out of order", 1)]
    assert "an old outage" not in {error for error, _ in top}


def test_status_counts_reminders_due_stuck_and_failed(db: PostgresDatabase, arranged: Row) -> None:
    reminders = db.call("planbus_status")["reminders"]
    assert {k: reminders[k] for k in ("scheduled", "sending", "sent", "cancelled", "failed")} == {
        "scheduled": 2,
        "sending": 1,
        "sent": 1,
        "cancelled": 1,
        "failed": 1,
    }
    assert reminders["due"] == 1
    assert 9 * 60 <= reminders["oldest_due_seconds"] < 12 * 60
    assert reminders["stuck"] == 1
    assert reminders["sent_24h"] == 1
    assert reminders["failed_24h"] == 1


def test_status_of_an_empty_database_has_zeros_and_no_ages(db: PostgresDatabase) -> None:
    status = db.call("planbus_status")
    assert status["requests"]["pending"] == 0
    assert status["requests"]["oldest_pending_seconds"] is None
    assert status["failures_24h"] == {"failed": 0, "errors": 0, "top_errors": []}
    assert status["reminders"]["oldest_due_seconds"] is None
    in_force = db.call("planbus_daily_plan_request_limit")
    assert status["limits"]["daily_plan_request_limit"] == {
        "limit": in_force["limit"],
        "unlimited": in_force["unlimited"],
        "stored": in_force["stored"],
    }


@pytest.mark.parametrize(
    ("stored", "limit", "text"),
    [
        ("5", 5, "5"),
        ("unlimited", None, "unlimited"),
        ("lots", 20, "20 (the default, since the stored value 'lots' is not a number)"),
    ],
)
def test_status_shows_the_daily_limit_in_force(
    db: PostgresDatabase, stored: str, limit: int | None, text: str
) -> None:
    db.call("planbus_store_setting", p_name="daily_plan_request_limit", p_value=stored)
    shown = db.call("planbus_status")["limits"]["daily_plan_request_limit"]
    assert shown == {"limit": limit, "unlimited": limit is None, "stored": stored}
    assert limit_text(shown) == text


def test_a_limit_that_was_never_stored_reads_as_the_default() -> None:
    assert limit_text({"limit": 20, "unlimited": False, "stored": None}) == "20 (the default; not set)"
    assert limit_text({"limit": None, "unlimited": True, "stored": None}) == "unlimited (not set)"


def test_status_is_for_the_service_role_only(sql: SQL) -> None:
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), sql.transaction():
            sql.execute(f"SET LOCAL ROLE {role}")
            sql.execute("SELECT public.planbus_status()")
    with sql.transaction():
        sql.execute("SET LOCAL ROLE service_role")
        status = sql.execute("SELECT public.planbus_status() AS s").fetchone()
        assert status is not None
        assert set(status["s"]) == {
            "generated_at",
            "requests",
            "failures_24h",
            "reminders",
            "limits",
            "deliveries",
            "pending_by_kind",
        }


def test_status_json_prints_the_status_object(
    database_url: str, arranged: Row, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["requests"]["stale"] == 1
    assert printed["failures_24h"]["top_errors"][0]["count"] == 2
    assert set(printed) == {
        "generated_at",
        "requests",
        "failures_24h",
        "reminders",
        "limits",
        "deliveries",
        "pending_by_kind",
    }


def test_status_in_a_terminal_reads_as_sections(
    database_url: str, arranged: Row, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "oldest 5 m 0" in out and arranged["oldest_pending_id"] in out
    assert "stale (lease expired): 1" in out
    assert "failures in the last 24 h: 3 request(s) failed, 4 attempt error(s)" in out
    assert "      2  the model refused: policy" in out
    assert "due now: 1" in out
    assert "daily plan-request limit per user: " in out


def test_status_without_a_database_setting_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 1
    assert "set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY" in capsys.readouterr().err


def test_status_works_over_the_supabase_rest_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-role-key")
    status = {
        "generated_at": "2026-11-27T10:00:00+00:00",
        "requests": {
            "pending": 1,
            "processing": 0,
            "completed": 5,
            "failed": 0,
            "created_24h": 6,
            "waiting_retry": 0,
            "stale": 0,
            "oldest_pending_seconds": 75.5,
            "oldest_pending_id": "0b6f6c8e-4a43-4c0e-9d7b-6f1f2b2b9a01",
        },
        "failures_24h": {"failed": 0, "errors": 0, "top_errors": []},
        "reminders": {
            "scheduled": 3,
            "sending": 0,
            "sent": 2,
            "cancelled": 0,
            "failed": 0,
            "due": 0,
            "oldest_due_seconds": None,
            "stuck": 0,
            "sent_24h": 2,
            "failed_24h": 0,
        },
        "limits": {"daily_plan_request_limit": {"limit": 20, "unlimited": False, "stored": "20"}},
    }
    with respx.mock(assert_all_called=True) as router:
        route = router.post("https://project.supabase.co/rest/v1/rpc/planbus_status").mock(
            return_value=httpx.Response(200, json=status)
        )
        assert main(["status"]) == 0
    sent = route.calls.last.request
    assert sent.headers["apikey"] == "service-role-key"
    assert json.loads(sent.content or b"{}") == {}
    out = capsys.readouterr().out
    assert "oldest 1 m 15 s" in out
    assert "daily plan-request limit per user: 20" in out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (4.4, "4 s"), (75, "1 m 15 s"), (7300, "2 h 01 m"), (200000, "2 d 7 h")],
)
def test_ages_read_in_the_largest_useful_unit(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


def test_render_names_a_set_limit() -> None:
    status = {
        "generated_at": "now",
        "requests": {
            "pending": 0,
            "processing": 0,
            "completed": 0,
            "failed": 0,
            "created_24h": 0,
            "waiting_retry": 0,
            "stale": 0,
            "oldest_pending_seconds": None,
            "oldest_pending_id": None,
        },
        "failures_24h": {"failed": 0, "errors": 0, "top_errors": []},
        "reminders": {
            "scheduled": 0,
            "sending": 0,
            "sent": 0,
            "cancelled": 0,
            "failed": 0,
            "due": 0,
            "oldest_due_seconds": None,
            "stuck": 0,
            "sent_24h": 0,
            "failed_24h": 0,
        },
        "limits": {"daily_plan_request_limit": {"limit": 3, "unlimited": False, "stored": "3"}},
    }
    assert "daily plan-request limit per user: 3" in render(status)


def test_a_scheduled_reminder_can_be_moved_and_others_cannot(
    db: PostgresDatabase, sql: SQL, make_lead: Callable[..., Row], make_request: Callable[..., Row]
) -> None:
    request = make_request(make_lead())
    complete(db, request, [reminder(0, 60 * 24), reminder(1, 60 * 48)])
    first, second = sql.execute(
        "SELECT id FROM public.reminders WHERE plan_request_id = %s ORDER BY step_index", (request["id"],)
    ).fetchall()
    now = datetime.now(UTC)
    moved = db.call("planbus_reschedule_reminder", p_reminder_id=first["id"], p_due_at=now)
    assert moved["rescheduled"] is True
    due = db.call("planbus_claim_due_reminders", p_limit=10, p_lease_seconds=60)
    assert [r["id"] for r in due] == [str(first["id"])]

    again = db.call("planbus_reschedule_reminder", p_reminder_id=first["id"], p_due_at=now)
    assert again == {
        "rescheduled": False,
        "status": "sending",
        "reason": "only a scheduled reminder can be moved; this one is sending",
    }
    unknown = db.call(
        "planbus_reschedule_reminder", p_reminder_id="00000000-0000-0000-0000-000000000000", p_due_at=now
    )
    assert unknown["reason"] == "unknown reminder"
    untouched = sql.execute(
        "SELECT status, due_at FROM public.reminders WHERE id = %s", (second["id"],)
    ).fetchone()
    assert untouched is not None and untouched["status"] == "scheduled" and untouched["due_at"] > now


def test_a_reminder_cannot_be_moved_to_no_time(
    db: PostgresDatabase, sql: SQL, make_lead: Callable[..., Row], make_request: Callable[..., Row]
) -> None:
    request = make_request(make_lead())
    complete(db, request, [reminder(0, 60)])
    row = sql.execute(
        "SELECT id FROM public.reminders WHERE plan_request_id = %s", (request["id"],)
    ).fetchone()
    assert row is not None
    with pytest.raises(Exception, match="a reminder needs a due time"):
        db.call("planbus_reschedule_reminder", p_reminder_id=row["id"], p_due_at=None)
