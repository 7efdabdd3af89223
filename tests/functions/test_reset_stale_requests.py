"""reset_stale_requests against real PostgreSQL: expired leases, lost webhooks, pruning, authentication.

Time is arranged by moving the rows' timestamps in the owner connection, never by changing a status.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flask.testing
import psycopg
import pytest
from psycopg import sql as q
from psycopg.types.json import Jsonb

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.kinds import KINDS, PLAN, AnyKind
from planbus.services.recovery import RecoveryCounts, reset_stale_requests
from planbus.settings import Settings
from support import mini_app
from support.concurrency import run_together
from support.request_kinds import claimed_attempt, ready_request
from support.request_rows import error_history, request_row

SECRET = "scheduler-secret"

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PLAN_GENERATOR", "offline")


def client() -> flask.testing.FlaskClient:
    return mini_app.client("reset_stale_requests")


def call(body: Any = None, headers: dict[str, str] | None = None) -> Any:
    return client().post("/", json=body, headers={"X-Webhook-Secret": SECRET} if headers is None else headers)


def claimed(
    sql: Sql, db: PostgresDatabase, kind: AnyKind, request: Row, *, attempts: int, lease_in: float
) -> Row:
    """A worker's claim (the real transition), then arranged: its attempt number and when its lease ends."""
    claimed_attempt(db, kind, request["id"])
    row = sql.execute(
        q.SQL(
            "UPDATE {} SET attempts = %s, lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = %s RETURNING *"
        ).format(q.Identifier(kind.table)),
        (attempts, lease_in, request["id"]),
    ).fetchone()
    assert row is not None
    return row


def sweep_with(db: PostgresDatabase, settings: Settings) -> RecoveryCounts:
    """The sweeper's use case over every kind, with the kinds' offline generators."""
    return reset_stale_requests(
        KINDS, db, SystemClock(), generator_for=lambda kind: kind.generator(settings), settings=settings
    )


def webhook_overdue(sql: Sql, kind: AnyKind, request: Row, seconds: float) -> None:
    sql.execute(
        q.SQL(
            "UPDATE {} SET run_after = now() - make_interval(secs => %s),"
            " created_at = now() - make_interval(secs => %s) WHERE id = %s"
        ).format(q.Identifier(kind.table)),
        (seconds, seconds, request["id"]),
    )


@pytest.fixture
def stale_request(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> Callable[..., Row]:
    """Makes a new lead's request of the test's kind that a worker claimed for its `attempts`-th time and
    whose lease ran out."""

    def make(*, attempts: int = 1, **lead: Any) -> Row:
        request = ready_request(sql, db, kind, make_lead(**lead))
        return claimed(sql, db, kind, request, attempts=attempts, lease_in=-1)

    return make


@pytest.fixture
def lost_request(db: PostgresDatabase, sql: Sql, make_lead: Callable[..., Row]) -> Callable[..., Row]:
    """Makes a new lead's pending request of `kind` whose webhook is `overdue` seconds late; returns it as
    stored."""

    def make(kind: AnyKind, *, overdue: float = 120, **lead: Any) -> Row:
        request = ready_request(sql, db, kind, make_lead(**lead))
        webhook_overdue(sql, kind, request, overdue)
        return request_row(sql, request["id"], kind.table)

    return make


def test_an_expired_lease_is_reset_and_the_request_then_processed(
    app_env: None, sql: Sql, kind: AnyKind, stale_request: Callable[..., Row]
) -> None:
    request = stale_request(attempts=1)

    response = call()

    assert response.status_code == 200
    answer = response.get_json()
    assert (answer["reset"], answer["failed"], answer["redispatched"]) == (1, 0, 1)
    assert answer["outcomes"] == {"completed": 1}
    assert answer["kinds"][kind.name] == {"reset": 1, "failed": 0, "redispatched": 1}
    row = request_row(sql, request["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("completed", 2)
    assert error_history(sql, request["id"]) == [(1, "lease expired during attempt 1")]


def test_a_stale_request_out_of_attempts_fails_with_a_clear_error(
    app_env: None, sql: Sql, kind: AnyKind, stale_request: Callable[..., Row]
) -> None:
    request = stale_request(attempts=3)

    answer = call().get_json()

    assert (answer["reset"], answer["failed"], answer["redispatched"]) == (0, 1, 0)
    row = request_row(sql, request["id"], kind.table)
    assert (row["status"], row["lease_expires_at"]) == ("failed", None)
    assert row["error"] == "gave up after 3 attempts: the lease expired before the worker finished"


def test_rows_still_within_their_lease_and_fresh_pending_rows_are_untouched(
    app_env: None, db: PostgresDatabase, sql: Sql, kind: AnyKind, make_lead: Callable[..., Row]
) -> None:
    held_request = ready_request(sql, db, kind, make_lead(full_name="Held"))
    held = claimed(sql, db, kind, held_request, attempts=1, lease_in=120)
    fresh = ready_request(sql, db, kind, make_lead(full_name="Fresh"))

    answer = call().get_json()

    assert (answer["reset"], answer["failed"], answer["redispatched"]) == (0, 0, 0)
    assert request_row(sql, held["id"], kind.table) == held
    assert request_row(sql, fresh["id"], kind.table) == fresh


def test_a_request_whose_webhook_was_lost_is_processed_by_the_sweeper(
    app_env: None, sql: Sql, kind: AnyKind, lost_request: Callable[..., Row]
) -> None:
    request = lost_request(kind, overdue=120, full_name="Ada Lovelace", company="Analytical Engines")

    answer = call().get_json()

    assert (answer["redispatched"], answer["outcomes"]) == (1, {"completed": 1})
    row = request_row(sql, request["id"], kind.table)
    assert (row["status"], row["attempts"]) == ("completed", 1)
    assert row["result"]["generator"] == "offline"


def test_a_lost_plan_request_gets_its_lead_update_and_reminders(
    app_env: None, sql: Sql, lost_request: Callable[..., Row]
) -> None:
    request = lost_request(PLAN, overdue=120, full_name="Ada Lovelace", company="Analytical Engines")

    assert call().get_json()["outcomes"] == {"completed": 1}
    assert sql.execute(
        "SELECT plan_request_id, status FROM leads WHERE id = %s", (request["lead_id"],)
    ).fetchone() == {
        "plan_request_id": request["id"],
        "status": "plan_ready",
    }
    reminders = sql.execute(
        "SELECT count(*) AS n FROM reminders WHERE plan_request_id = %s", (request["id"],)
    )
    assert reminders.fetchone()["n"] > 0  # type: ignore[index]


def test_lost_requests_of_every_kind_are_taken_oldest_first_up_to_the_limit(
    app_env: None, sql: Sql, lost_request: Callable[..., Row]
) -> None:
    # The oldest of each kind in turn, older kinds last: the order is by age, not by kind.
    lost = [
        (kind, lost_request(kind, overdue=900 - 100 * n, telegram_id=10 + n, full_name=f"Lead {n}"))
        for n, kind in enumerate(reversed(KINDS * 2))
    ]

    answer = call({"limit": len(KINDS)}).get_json()

    assert answer["redispatched"] == len(KINDS)
    statuses = [request_row(sql, request["id"], kind.table)["status"] for kind, request in lost]
    assert statuses == ["completed"] * len(KINDS) + ["pending"] * len(KINDS)


def test_concurrent_sweepers_process_each_lost_request_once(
    database_url: str, sql: Sql, kind: AnyKind, lost_request: Callable[..., Row]
) -> None:
    requests = [lost_request(kind, overdue=120, telegram_id=100 + i, full_name=f"Lead {i}") for i in range(6)]
    settings = Settings(plan_generator="offline")

    def sweep(db: PostgresDatabase) -> dict[str, int]:
        return sweep_with(db, settings).outcomes

    sweepers = [PostgresDatabase(database_url) for _ in range(3)]
    try:
        outcomes = run_together([partial(sweep, db) for db in sweepers])
    finally:
        for db in sweepers:
            db.close()

    assert sum(o.get("completed", 0) for o in outcomes) == 6
    for request in requests:
        row = request_row(sql, request["id"], kind.table)
        assert (row["status"], row["attempts"]) == ("completed", 1)
    per_request = sql.execute("SELECT plan_request_id, count(*) AS n FROM reminders GROUP BY plan_request_id")
    assert len({r["n"] for r in per_request.fetchall()}) == 1


def test_nothing_is_taken_on_once_the_time_budget_is_spent(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, lost_request: Callable[..., Row]
) -> None:
    request = lost_request(kind, overdue=120)
    settings = Settings(plan_generator="offline", function_budget_seconds=1e-9)

    counts = sweep_with(db, settings)

    assert counts.redispatched == 0
    assert request_row(sql, request["id"], kind.table)["status"] == "pending"


def test_pruning_removes_only_what_is_past_retention(
    app_env: None, sql: Sql, make_lead: Callable[..., Row], make_request: Callable[..., Row]
) -> None:
    lead = make_lead()
    old = make_request(lead, status="completed", result=Jsonb({"plan": "old"}))
    recent = make_request(lead, status="completed", result=Jsonb({"plan": "recent"}))
    kept_by_reminder = make_request(lead, status="failed", error="gave up")

    def reminder(request: Row, step: int, status: str, age_days: int) -> Any:
        sent_at = "now" if status == "sent" else None
        row = sql.execute(
            """INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text, status,
                                      sent_at)
               VALUES (%s, %s, %s, %s, now(), 'step', %s, %s) RETURNING id""",
            (lead["id"], lead["telegram_id"], request["id"], step, status, sent_at),
        ).fetchone()
        assert row is not None
        sql.execute(
            "UPDATE reminders SET sent_at = sent_at - make_interval(days => %s), "
            "updated_at = now() - make_interval(days => %s) WHERE id = %s",
            (age_days, age_days, row["id"]),
        )
        return row["id"]

    old_sent = reminder(old, 0, "sent", 40)
    old_cancelled = reminder(old, 1, "cancelled", 40)
    recent_sent = reminder(recent, 0, "sent", 5)
    old_but_recently_sent = reminder(kept_by_reminder, 0, "sent", 5)
    sql.execute(
        "INSERT INTO planbus_private.telegram_outbox (chat_id, text, created_at) "
        "VALUES (1, 'old', now() - interval '40 days'), (1, 'new', now())"
    )
    # The touch trigger keeps updated_at honest on every update; switched off only to arrange the past.
    sql.execute("SET session_replication_role = replica")
    sql.execute(
        "UPDATE plan_requests SET updated_at = now() - interval '40 days' WHERE id = ANY(%s)",
        ([old["id"], kept_by_reminder["id"]],),
    )
    sql.execute(
        "UPDATE reminders SET updated_at = now() - interval '40 days' WHERE id = %s", (old_cancelled,)
    )
    sql.execute("RESET session_replication_role")

    answer = call().get_json()

    assert answer["pruned"] == {"requests": 1, "reminders": 2, "outbox": 1, "deliveries": 0}
    remaining_requests = {r["id"] for r in sql.execute("SELECT id FROM plan_requests").fetchall()}
    assert remaining_requests == {recent["id"], kept_by_reminder["id"]}
    remaining_reminders = {r["id"] for r in sql.execute("SELECT id FROM reminders").fetchall()}
    assert remaining_reminders == {recent_sent, old_but_recently_sent}
    assert old_sent not in remaining_reminders
    outbox = sql.execute("SELECT text FROM planbus_private.telegram_outbox").fetchall()
    assert outbox == [{"text": "new"}]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer wrong"}],
    ids=["none", "header", "bearer"],
)
def test_a_missing_or_wrong_secret_is_401_and_nothing_changes(
    app_env: None,
    sql: Sql,
    kind: AnyKind,
    stale_request: Callable[..., Row],
    lost_request: Callable[..., Row],
    headers: dict[str, str],
) -> None:
    stale = stale_request(attempts=1, full_name="Stale")
    lost = lost_request(kind, overdue=120, full_name="Lost")

    response = call(headers=headers)

    assert response.status_code == 401
    assert request_row(sql, stale["id"], kind.table) == stale
    assert request_row(sql, lost["id"], kind.table) == lost


@pytest.mark.parametrize("body", ['{"limit": 0}', '{"limit": 20000}', '{"max": 1}', "{"])
def test_a_bad_body_is_400_and_nothing_changes(
    app_env: None, sql: Sql, kind: AnyKind, stale_request: Callable[..., Row], body: str
) -> None:
    stale = stale_request(attempts=1)
    response = client().post("/", data=body, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 400
    assert "limit" in response.get_json()["error"]
    assert request_row(sql, stale["id"], kind.table) == stale
