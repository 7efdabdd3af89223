"""The per-user daily limit on plan requests, enforced by the database when the Mini App inserts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from planbus.cli import main as planbus
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError, LimitExceeded, database_error
from support.rls import Caller, act_as, claims, run_as

Sql = psycopg.Connection[dict[str, Any]]
ADA, BOB = 1001, 1002
NEW_REQUEST = (
    "INSERT INTO plan_requests (lead_id, telegram_id) VALUES (%(lead)s, %(telegram_id)s) RETURNING id"
)


def mini_app(telegram_id: int) -> Caller:
    return Caller(
        f"user {telegram_id}",
        "authenticated",
        claims(f"{telegram_id:08d}-0000-4000-8000-000000000000", telegram_id=telegram_id),
    )


def request_as(sql: Sql, telegram_id: int, lead: dict[str, Any]) -> Any:
    return run_as(sql, mini_app(telegram_id), NEW_REQUEST, {"lead": lead["id"], "telegram_id": telegram_id})


@pytest.fixture
def leads(make_lead: Callable[..., dict[str, Any]]) -> Callable[[int, int], list[dict[str, Any]]]:
    """n leads of one user: each lead takes one active request, so n requests need n leads."""
    return lambda telegram_id, n: [make_lead(telegram_id, f"Lead {i}") for i in range(n)]


def set_limit(db: PostgresDatabase, limit: int | None) -> dict[str, Any]:
    answer: dict[str, Any] = db.call("planbus_set_daily_plan_request_limit", p_limit=limit)
    return answer


def test_the_default_limit_is_stored_and_in_force(db: PostgresDatabase) -> None:
    assert db.call("planbus_daily_plan_request_limit") == {"limit": 20, "unlimited": False, "stored": "20"}


def test_the_request_past_the_limit_is_refused_and_the_days_earlier_requests_stand(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 3)
    mine = leads(ADA, 4)
    accepted = [request_as(sql, ADA, lead) for lead in mine[:3]]
    assert [a.refused for a in accepted] == [False, False, False]
    refused = request_as(sql, ADA, mine[3])
    assert refused.sqlstate == "PT429"
    assert refused.message == "daily plan request limit reached: 3 per user per day"
    rows = sql.execute("SELECT id, status FROM plan_requests ORDER BY created_at").fetchall()
    assert [r["id"] for r in rows] == [a.rows[0]["id"] for a in accepted]
    assert {r["status"] for r in rows} == {"pending"}
    assert db.call("planbus_daily_plan_request_limit", p_telegram_id=ADA)["used_today"] == 3


def test_the_refusal_maps_to_limit_exceeded() -> None:
    error = database_error("daily plan request limit reached: 3 per user per day", "PT429")
    assert isinstance(error, LimitExceeded) and isinstance(error, DatabaseError)


def test_one_users_limit_does_not_touch_another_user(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1)
    ada_leads, bob_leads = leads(ADA, 2), leads(BOB, 1)
    assert not request_as(sql, ADA, ada_leads[0]).refused
    assert request_as(sql, ADA, ada_leads[1]).sqlstate == "PT429"
    assert not request_as(sql, BOB, bob_leads[0]).refused


def test_a_request_refused_for_another_reason_does_not_use_up_the_limit(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1)
    lead = leads(ADA, 1)[0]
    someone_elses = leads(BOB, 1)[0]
    assert request_as(sql, ADA, someone_elses).sqlstate == "42501"
    assert not request_as(sql, ADA, lead).refused
    assert request_as(sql, ADA, lead).sqlstate == "PT429"


def test_a_new_utc_day_starts_a_new_count(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1)
    first, second = leads(ADA, 2)
    assert not request_as(sql, ADA, first).refused
    # Yesterday's count, as it would stand at midnight UTC.
    sql.execute(
        "UPDATE planbus_private.daily_request_counts SET day = day - 1"
        " WHERE kind = 'plan' AND telegram_id = %s",
        [ADA],
    )
    assert not request_as(sql, ADA, second).refused
    assert db.call("planbus_daily_plan_request_limit", p_telegram_id=ADA)["used_today"] == 1


def test_zero_pauses_requests_and_unlimited_lifts_the_limit(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    mine = leads(ADA, 3)
    assert set_limit(db, 0) == {"limit": 0, "unlimited": False, "stored": "0"}
    assert request_as(sql, ADA, mine[0]).sqlstate == "PT429"
    assert set_limit(db, None) == {"limit": None, "unlimited": True, "stored": "unlimited"}
    assert [request_as(sql, ADA, lead).refused for lead in mine] == [False, False, False]


def test_a_lowered_limit_applies_to_the_next_insert(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    mine = leads(ADA, 3)
    assert not request_as(sql, ADA, mine[0]).refused
    assert not request_as(sql, ADA, mine[1]).refused
    set_limit(db, 2)
    assert request_as(sql, ADA, mine[2]).sqlstate == "PT429"


@pytest.mark.parametrize("stored", ["lots", "-1", "", "1e3", "99999999999"])
def test_a_malformed_stored_limit_falls_back_to_the_default(
    db: PostgresDatabase, sql: Sql, stored: str
) -> None:
    db.call("planbus_store_setting", p_name="daily_plan_request_limit", p_value=stored)
    assert db.call("planbus_daily_plan_request_limit")["limit"] == 20


def test_a_negative_limit_is_refused(db: PostgresDatabase) -> None:
    with pytest.raises(DatabaseError, match="a daily limit is a count of requests") as refused:
        set_limit(db, -1)
    assert refused.value.sqlstate == "22023"
    assert db.call("planbus_daily_plan_request_limit")["limit"] == 20


def test_the_operator_and_the_functions_are_not_limited(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 0)
    owner_lead, service_lead = leads(ADA, 2)
    sql.execute(NEW_REQUEST, {"lead": owner_lead["id"], "telegram_id": ADA})
    with sql.transaction():
        sql.execute("SET LOCAL ROLE service_role")
        sql.execute(NEW_REQUEST, {"lead": service_lead["id"], "telegram_id": ADA})
    assert sql.execute("SELECT count(*) AS n FROM plan_requests").fetchone() == {"n": 2}
    assert db.call("planbus_daily_plan_request_limit", p_telegram_id=ADA)["used_today"] == 0


def test_concurrent_inserts_at_the_limit_do_not_exceed_it(
    db: PostgresDatabase, database_url: str, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    limit, racers = 5, 12
    set_limit(db, limit)
    mine = leads(ADA, racers)
    start = threading.Barrier(racers)
    outcomes: list[str] = []

    def insert(lead: dict[str, Any]) -> None:
        with psycopg.connect(database_url, row_factory=dict_row) as conn:
            try:
                with conn.transaction():
                    act_as(conn, mini_app(ADA))
                    start.wait(timeout=20)
                    conn.execute(NEW_REQUEST, {"lead": lead["id"], "telegram_id": ADA})
                    time.sleep(0.02)  # hold the transaction open so the others pile up behind it
                outcomes.append("accepted")
            except psycopg.Error as exc:
                outcomes.append(exc.sqlstate or "?")

    threads = [threading.Thread(target=insert, args=(lead,)) for lead in mine]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["PT429"] * (racers - limit) + ["accepted"] * limit
    assert sql.execute("SELECT count(*) AS n FROM plan_requests").fetchone() == {"n": limit}


def test_under_repeatable_read_the_second_of_two_racing_inserts_fails_instead_of_slipping_past(
    db: PostgresDatabase, database_url: str, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1)
    first_lead, second_lead = leads(ADA, 2)
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        for conn in (first, second):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            act_as(conn, mini_app(ADA))
            conn.execute("SELECT count(*) FROM plan_requests")  # takes the snapshot now
        first.execute(NEW_REQUEST, {"lead": first_lead["id"], "telegram_id": ADA})
        racer = threading.Thread(target=lambda: time.sleep(0.2) or first.commit())
        racer.start()
        with pytest.raises(psycopg.Error) as refused:
            second.execute(NEW_REQUEST, {"lead": second_lead["id"], "telegram_id": ADA})
        racer.join()
    assert refused.value.sqlstate in {"40001", "PT429"}
    assert sql.execute("SELECT count(*) AS n FROM plan_requests").fetchone() == {"n": 1}


def test_planbus_limits_shows_and_changes_the_limit(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sql: Sql
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert planbus(["limits"]) == 0
    assert capsys.readouterr().out == "daily plan requests per user (UTC day): 20\n"
    assert planbus(["limits", "--daily", "7"]) == 0
    assert capsys.readouterr().out == "daily plan requests per user (UTC day): 7\n"
    assert planbus(["limits", "--daily", "unlimited", "--user", str(ADA)]) == 0
    assert capsys.readouterr().out == (
        "daily plan requests per user (UTC day): unlimited\nuser 1001: 0 used today\n"
    )
    sql.execute("DELETE FROM planbus_private.settings WHERE name = 'daily_plan_request_limit'")
    assert planbus(["limits", "--user", str(ADA)]) == 0
    assert capsys.readouterr().out == (
        "daily plan requests per user (UTC day): 20 (default)\nuser 1001: 0 of 20 used today\n"
    )


@pytest.mark.parametrize("value", ["-3", "many", "2.5"])
def test_planbus_limits_refuses_a_value_that_is_not_a_count(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    with pytest.raises(SystemExit) as exit_:
        planbus(["limits", "--daily", value])
    assert exit_.value.code == 2
    assert "--daily" in capsys.readouterr().err
