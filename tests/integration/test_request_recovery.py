"""Recovering requests of every kind: expired leases reset, lost webhooks found, old rows pruned, bad input
refused."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql as q

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError
from planbus.kinds import KINDS, PLAN, AnyKind
from support.request_kinds import claimed_attempt, complete_request, insert_request
from support.request_rows import error_history, expire_lease, request_row

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]


def status_of(sql: Conn, request_id: Any, table: str = "plan_requests") -> tuple[str, int, str | None]:
    found = request_row(sql, request_id, table)
    return found["status"], found["attempts"], found["error"]


def reset(db: PostgresDatabase, kind: AnyKind) -> Any:
    return db.call("planbus_reset_stale_requests", p_kind=kind.name, p_max_attempts=3)


def lost_ids(db: PostgresDatabase, kind: AnyKind, *, grace: int, limit: int = 10) -> list[str]:
    lost = db.call("planbus_find_lost_requests", p_kind=kind.name, p_grace_seconds=grace, p_limit=limit)
    return [item["id"] for item in lost]


def backdate(sql: Conn, table: str, row_id: Any, **columns: datetime) -> None:
    """Move timestamps into the past, bypassing the updated_at trigger (what time passing would do)."""
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    sql.execute("SET session_replication_role = replica")
    try:
        sql.execute(f"UPDATE {table} SET {assignments} WHERE id = %(id)s", {**columns, "id": row_id})
    finally:
        sql.execute("SET session_replication_role = DEFAULT")


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def test_expired_leases_go_back_to_pending_and_live_ones_are_untouched(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    stale, live = make_kind_request(make_lead()), make_kind_request(make_lead(telegram_id=2))
    claimed_attempt(db, kind, stale["id"])
    claimed_attempt(db, kind, live["id"])
    expire_lease(sql, stale["id"], kind.table)

    assert reset(db, kind) == {"reset": 1, "failed": 0}
    assert status_of(sql, stale["id"], kind.table) == ("pending", 1, None)
    assert status_of(sql, live["id"], kind.table) == ("processing", 1, None)
    assert error_history(sql, stale["id"]) == [(1, "lease expired during attempt 1")]
    # Reset rows are claimable at once, and the sweeper finds them, with the attempt a claim would start.
    lost = db.call("planbus_find_lost_requests", p_kind=kind.name, p_grace_seconds=3600, p_limit=10)
    assert [(item["id"], item["attempt"]) for item in lost] == [(str(stale["id"]), 2)]
    assert claimed_attempt(db, kind, stale["id"]) == 2


def test_resetting_one_kind_leaves_the_other_kinds_alone(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead
) -> None:
    stale = {}
    for n, each in enumerate(KINDS):
        stale[each.name] = insert_request(sql, each, make_lead(telegram_id=10 + n))
        claimed_attempt(db, each, stale[each.name]["id"])
        expire_lease(sql, stale[each.name]["id"], each.table)
    for each in KINDS:
        assert reset(db, each) == {"reset": 1, "failed": 0}
        assert reset(db, each) == {"reset": 0, "failed": 0}
    assert {status_of(sql, stale[each.name]["id"], each.table)[0] for each in KINDS} == {"pending"}


def test_an_expired_lease_on_the_last_attempt_fails_the_request_for_good(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    request = make_kind_request(make_lead())
    for round_ in range(3):
        claimed_attempt(db, kind, request["id"])
        expire_lease(sql, request["id"], kind.table)
        if round_ < 2:
            reset(db, kind)
    assert reset(db, kind) == {"reset": 0, "failed": 1}
    assert status_of(sql, request["id"], kind.table) == (
        "failed",
        3,
        "gave up after 3 attempts: the lease expired before the worker finished",
    )
    assert reset(db, kind) == {"reset": 0, "failed": 0}


def test_reset_skips_a_row_another_transaction_is_holding(
    db: PostgresDatabase,
    sql: Conn,
    database_url: str,
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
) -> None:
    request = make_kind_request(make_lead())
    claimed_attempt(db, kind, request["id"])
    expire_lease(sql, request["id"], kind.table)
    with psycopg.connect(database_url) as holder:
        holder.execute(
            q.SQL("SELECT 1 FROM public.{} WHERE id = %s FOR UPDATE").format(q.Identifier(kind.table)),
            [request["id"]],
        )
        assert reset(db, kind) == {"reset": 0, "failed": 0}
    assert reset(db, kind) == {"reset": 1, "failed": 0}


def test_lost_requests_are_overdue_first_attempts_and_due_retries_oldest_first(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    leads = [make_lead(telegram_id=n) for n in range(1, 7)]
    overdue_old = make_kind_request(leads[0], run_after=ago(minutes=10), created_at=ago(minutes=10))
    overdue = make_kind_request(leads[1], run_after=ago(minutes=2), created_at=ago(minutes=2))
    make_kind_request(leads[2])  # just inserted: its webhook is on its way
    retry_due, retry_waiting = make_kind_request(leads[3]), make_kind_request(leads[4])
    for retry in (retry_due, retry_waiting):
        assert claimed_attempt(db, kind, retry["id"]) == 1
        db.call(
            "planbus_fail_request",
            p_kind=kind.name,
            p_request_id=str(retry["id"]),
            p_attempt=1,
            p_error="timeout",
            p_retryable=True,
            p_max_attempts=3,
        )
    sql.execute(
        q.SQL("UPDATE public.{} SET run_after = %s WHERE id = %s").format(q.Identifier(kind.table)),
        [ago(minutes=5), retry_due["id"]],
    )
    held = make_kind_request(leads[5], run_after=ago(minutes=30))
    claimed_attempt(db, kind, held["id"])

    lost = lost_ids(db, kind, grace=60)
    assert lost == [str(overdue_old["id"]), str(retry_due["id"]), str(overdue["id"])]
    assert lost_ids(db, kind, grace=60, limit=2) == lost[:2]
    assert lost_ids(db, kind, grace=3600) == [str(retry_due["id"])]


def test_finished_requests_of_every_kind_are_pruned_with_their_error_history(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    old, recent = make_kind_request(make_lead(telegram_id=1)), make_kind_request(make_lead(telegram_id=2))
    for request in (old, recent):
        db.call(
            "planbus_fail_request",
            p_kind=kind.name,
            p_request_id=str(request["id"]),
            p_attempt=claimed_attempt(db, kind, request["id"]),
            p_error="refused",
            p_retryable=False,
            p_max_attempts=3,
        )
    backdate(sql, kind.table, old["id"], updated_at=ago(days=40))

    assert db.call("planbus_prune", p_retention_days=30)["requests"] == 1
    assert [r["id"] for r in sql.execute(q.SQL("SELECT id FROM {}").format(q.Identifier(kind.table)))] == [
        recent["id"]
    ]
    assert error_history(sql, old["id"]) == []
    assert error_history(sql, recent["id"]) == [(1, "refused")]


def test_pruning_removes_only_what_is_past_retention(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    def finished(lead: Row, steps: int) -> Row:
        request = make_request(lead)
        due = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        reminders = [{"step_index": s, "due_at": due, "text": f"step {s}"} for s in range(steps)]
        complete_request(
            db, PLAN, request["id"], result={"plan": {}}, completion={"plan": {}, "reminders": reminders}
        )
        return request

    old_done = finished(make_lead(telegram_id=1), 0)
    backdate(sql, "plan_requests", old_done["id"], updated_at=ago(days=40))
    sql.execute(
        "INSERT INTO planbus_private.request_errors (kind, request_id, attempt, message)"
        " VALUES ('plan', %s, 1, 'x')",
        [old_done["id"]],
    )
    recent_done = finished(make_lead(telegram_id=2), 0)
    old_with_pending_reminder = finished(make_lead(telegram_id=3), 1)
    backdate(sql, "plan_requests", old_with_pending_reminder["id"], updated_at=ago(days=40))
    old_with_sent_reminders = finished(make_lead(telegram_id=4), 2)
    backdate(sql, "plan_requests", old_with_sent_reminders["id"], updated_at=ago(days=40))
    sent = sql.execute(
        "SELECT id, step_index FROM reminders WHERE plan_request_id = %s ORDER BY step_index",
        [old_with_sent_reminders["id"]],
    ).fetchall()
    for reminder, sent_at in zip(sent, (ago(days=35), ago(days=2)), strict=True):
        sql.execute(
            "UPDATE reminders SET status = 'sent', delivered_via = 'telegram', sent_at = %s WHERE id = %s",
            [sent_at, reminder["id"]],
        )
    old_pending = make_request(make_lead(telegram_id=5))
    backdate(sql, "plan_requests", old_pending["id"], updated_at=ago(days=40))
    sql.execute(
        "INSERT INTO planbus_private.telegram_outbox (chat_id, text, created_at)"
        " VALUES (1, 'old', %s), (1, 'new', now())",
        [ago(days=31)],
    )
    sql.execute(
        "INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, created_at)"
        " VALUES ('plan', %s, 'pg_net', %s), ('plan', %s, 'pg_net', now())",
        [old_done["id"], ago(days=31), recent_done["id"]],
    )

    assert db.call("planbus_prune", p_retention_days=30) == {
        "requests": 1,
        "reminders": 1,
        "outbox": 1,
        "deliveries": 1,
    }
    remaining = {r["id"] for r in sql.execute("SELECT id FROM plan_requests").fetchall()}
    assert remaining == {
        recent_done["id"],
        old_with_pending_reminder["id"],
        old_with_sent_reminders["id"],
        old_pending["id"],
    }
    assert [r["id"] for r in sql.execute("SELECT id FROM reminders WHERE status = 'sent'").fetchall()] == [
        sent[1]["id"]
    ]
    assert error_history(sql, old_done["id"]) == []
    assert [
        r["text"] for r in sql.execute("SELECT text FROM planbus_private.telegram_outbox").fetchall()
    ] == ["new"]


NOBODY = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("function", "params", "message"),
    [
        (
            "planbus_claim_request",
            {"p_request_id": None, "p_lease_seconds": 60, "p_max_attempts": 3},
            "p_request_id",
        ),
        (
            "planbus_claim_request",
            {"p_request_id": NOBODY, "p_lease_seconds": 0, "p_max_attempts": 3},
            "p_lease_seconds must be positive",
        ),
        (
            "planbus_claim_request",
            {"p_request_id": NOBODY, "p_lease_seconds": 60, "p_max_attempts": 0},
            "p_max_attempts must be positive",
        ),
        ("planbus_reset_stale_requests", {"p_max_attempts": None}, "p_max_attempts must be positive"),
        ("planbus_find_lost_requests", {"p_grace_seconds": -1, "p_limit": 10}, "p_grace_seconds"),
        ("planbus_find_lost_requests", {"p_grace_seconds": 60, "p_limit": 0}, "p_limit must be positive"),
        ("planbus_dispatch_check", {"p_request_id": None}, "p_request_id is required"),
        (
            "planbus_record_delivery",
            {"p_request_id": NOBODY, "p_channel": "carrier pigeon", "p_outcome": "lost", "p_detail": None},
            "p_channel must be",
        ),
        (
            "planbus_record_delivery",
            {"p_request_id": NOBODY, "p_channel": "cloud_tasks", "p_outcome": " ", "p_detail": None},
            "p_outcome must be a non-empty word",
        ),
    ],
)
def test_nonsense_arguments_are_refused_with_a_clear_error(
    db: PostgresDatabase, kind: AnyKind, function: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatabaseError, match=message) as refused:
        db.call(function, p_kind=kind.name, **params)
    assert refused.value.sqlstate == "22023"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"p_retention_days": 0}, "p_retention_days must be positive"),
        ({"p_retention_days": None}, "positive"),
    ],
)
def test_nonsense_retention_is_refused_with_a_clear_error(
    db: PostgresDatabase, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatabaseError, match=message) as refused:
        db.call("planbus_prune", **params)
    assert refused.value.sqlstate == "22023"


@pytest.mark.parametrize("error", ["", "   ", None])
def test_a_failure_without_a_reason_is_refused_and_the_claim_kept(
    db: PostgresDatabase,
    sql: Conn,
    kind: AnyKind,
    make_lead: MakeLead,
    make_kind_request: MakeRequest,
    error: str | None,
) -> None:
    request = make_kind_request(make_lead())
    attempt = claimed_attempt(db, kind, request["id"])
    with pytest.raises(DatabaseError, match="p_error must be a non-empty reason"):
        db.call(
            "planbus_fail_request",
            p_kind=kind.name,
            p_request_id=str(request["id"]),
            p_attempt=attempt,
            p_error=error,
            p_retryable=False,
            p_max_attempts=3,
        )
    assert status_of(sql, request["id"], kind.table) == ("processing", 1, None)
    # The claim is intact: the worker can still complete it.
    done = complete_request(db, kind, request["id"], attempt=attempt)
    assert done["completed"] is True
