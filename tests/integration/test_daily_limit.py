"""The per-user daily limit on each kind of request, enforced by the database when the Mini App inserts.

Every test that takes `kind` runs once per registered kind; each kind has its own limit and its own count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql as q
from psycopg.rows import dict_row

from planbus.cli import main as planbus
from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError, LimitExceeded, database_error
from planbus.kinds import KINDS, PLAN, AnyKind
from support.concurrency import connections, run_together
from support.request_kinds import INSERT_DEFAULTS
from support.rls import Caller, act_as, claims, run_as

Sql = psycopg.Connection[dict[str, Any]]
ADA, BOB = 1001, 1002
DEFAULT_LIMITS = {"plan": 20, "draft": 50}


def new_request(kind: AnyKind) -> q.Composed:
    """The Mini App's insert of a request of `kind` for %(lead)s by %(telegram_id)s."""
    columns = {
        "lead_id": "lead",
        "telegram_id": "telegram_id",
        **{name: name for name in INSERT_DEFAULTS[kind.name]},
    }
    return q.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        q.Identifier(kind.table),
        q.SQL(", ").join(map(q.Identifier, columns)),
        q.SQL(", ").join(map(q.Placeholder, columns.values())),
    )


def params(kind: AnyKind, telegram_id: int, lead: dict[str, Any]) -> dict[str, Any]:
    return {"lead": lead["id"], "telegram_id": telegram_id, **INSERT_DEFAULTS[kind.name]}


def mini_app(telegram_id: int) -> Caller:
    return Caller(
        f"user {telegram_id}",
        "authenticated",
        claims(f"{telegram_id:08d}-0000-4000-8000-000000000000", telegram_id=telegram_id),
    )


def request_as(sql: Sql, telegram_id: int, lead: dict[str, Any], kind: AnyKind = PLAN) -> Any:
    return run_as(sql, mini_app(telegram_id), new_request(kind), params(kind, telegram_id, lead))


def count(sql: Sql, kind: AnyKind) -> int:
    row = sql.execute(q.SQL("SELECT count(*) AS n FROM {}").format(q.Identifier(kind.table))).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.fixture
def leads(make_lead: Callable[..., dict[str, Any]]) -> Callable[[int, int], list[dict[str, Any]]]:
    """n leads of one user: each lead takes one active request, so n requests need n leads."""
    return lambda telegram_id, n: [make_lead(telegram_id, f"Lead {i}") for i in range(n)]


def set_limit(db: PostgresDatabase, limit: int | None, kind: AnyKind = PLAN) -> dict[str, Any]:
    answer: dict[str, Any] = db.call("planbus_set_daily_request_limit", p_kind=kind.name, p_limit=limit)
    return answer


def limit_of(db: PostgresDatabase, kind: AnyKind, telegram_id: int | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = db.call(
        "planbus_daily_request_limit", p_kind=kind.name, p_telegram_id=telegram_id
    )
    return answer


def test_each_kinds_default_limit_is_stored_and_in_force(db: PostgresDatabase, kind: AnyKind) -> None:
    default = DEFAULT_LIMITS[kind.name]
    assert limit_of(db, kind) == {"limit": default, "unlimited": False, "stored": str(default)}


def test_the_plan_limit_reads_as_it_always_has(db: PostgresDatabase) -> None:
    assert db.call("planbus_daily_plan_request_limit") == {"limit": 20, "unlimited": False, "stored": "20"}
    assert db.call("planbus_set_daily_plan_request_limit", p_limit=4)["limit"] == 4
    assert limit_of(db, PLAN)["limit"] == 4


def test_the_request_past_the_limit_is_refused_and_the_days_earlier_requests_stand(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 3, kind)
    mine = leads(ADA, 4)
    accepted = [request_as(sql, ADA, lead, kind) for lead in mine[:3]]
    assert [a.refused for a in accepted] == [False, False, False]
    refused = request_as(sql, ADA, mine[3], kind)
    assert refused.sqlstate == "PT429"
    assert refused.message == f"daily {kind.name} request limit reached: 3 per user per day"
    rows = sql.execute(
        q.SQL("SELECT id, status FROM {} ORDER BY created_at").format(q.Identifier(kind.table))
    )
    stored = rows.fetchall()
    assert [r["id"] for r in stored] == [a.rows[0]["id"] for a in accepted]
    assert {r["status"] for r in stored} == {"pending"}
    assert limit_of(db, kind, ADA)["used_today"] == 3


def test_each_kind_is_counted_and_limited_on_its_own(
    db: PostgresDatabase, sql: Sql, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    mine = leads(ADA, 2)
    for kind in KINDS:
        set_limit(db, 1, kind)
    for kind in KINDS:
        assert not request_as(sql, ADA, mine[0], kind).refused
    for kind in KINDS:
        assert request_as(sql, ADA, mine[1], kind).sqlstate == "PT429"
        assert limit_of(db, kind, ADA)["used_today"] == 1
    set_limit(db, 0, KINDS[0])
    assert all(limit_of(db, kind)["limit"] == 1 for kind in KINDS[1:])


def test_the_refusal_maps_to_limit_exceeded() -> None:
    error = database_error("daily plan request limit reached: 3 per user per day", "PT429")
    assert type(error) is LimitExceeded
    assert (error.sqlstate, str(error)) == ("PT429", "daily plan request limit reached: 3 per user per day")


def test_one_users_limit_does_not_touch_another_user(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1, kind)
    ada_leads, bob_leads = leads(ADA, 2), leads(BOB, 1)
    assert not request_as(sql, ADA, ada_leads[0], kind).refused
    assert request_as(sql, ADA, ada_leads[1], kind).sqlstate == "PT429"
    assert not request_as(sql, BOB, bob_leads[0], kind).refused


def test_a_request_refused_for_another_reason_does_not_use_up_the_limit(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1, kind)
    lead = leads(ADA, 1)[0]
    someone_elses = leads(BOB, 1)[0]
    assert request_as(sql, ADA, someone_elses, kind).sqlstate == "42501"
    assert not request_as(sql, ADA, lead, kind).refused
    assert request_as(sql, ADA, lead, kind).sqlstate == "PT429"


def test_a_new_utc_day_starts_a_new_count(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 1, kind)
    first, second = leads(ADA, 2)
    assert not request_as(sql, ADA, first, kind).refused
    # Yesterday's count, as it would stand at midnight UTC.
    sql.execute(
        "UPDATE planbus_private.daily_request_counts SET day = day - 1 WHERE kind = %s AND telegram_id = %s",
        [kind.name, ADA],
    )
    assert not request_as(sql, ADA, second, kind).refused
    assert limit_of(db, kind, ADA)["used_today"] == 1


def test_zero_pauses_requests_and_unlimited_lifts_the_limit(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    mine = leads(ADA, 3)
    assert set_limit(db, 0, kind) == {"limit": 0, "unlimited": False, "stored": "0"}
    assert request_as(sql, ADA, mine[0], kind).sqlstate == "PT429"
    assert set_limit(db, None, kind) == {"limit": None, "unlimited": True, "stored": "unlimited"}
    assert [request_as(sql, ADA, lead, kind).refused for lead in mine] == [False, False, False]


def test_a_lowered_limit_applies_to_the_next_insert(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    mine = leads(ADA, 3)
    assert not request_as(sql, ADA, mine[0], kind).refused
    assert not request_as(sql, ADA, mine[1], kind).refused
    set_limit(db, 2, kind)
    assert request_as(sql, ADA, mine[2], kind).sqlstate == "PT429"


@pytest.mark.parametrize("stored", ["lots", "-1", "", "1e3", "99999999999"])
def test_a_malformed_stored_limit_falls_back_to_the_default(
    db: PostgresDatabase, kind: AnyKind, stored: str
) -> None:
    db.call("planbus_store_setting", p_name=f"daily_{kind.name}_request_limit", p_value=stored)
    assert limit_of(db, kind)["limit"] == DEFAULT_LIMITS[kind.name]


def test_a_negative_limit_or_an_unknown_kind_is_refused(db: PostgresDatabase, kind: AnyKind) -> None:
    with pytest.raises(DatabaseError, match="a daily limit is a count of requests") as refused:
        set_limit(db, -1, kind)
    assert refused.value.sqlstate == "22023"
    with pytest.raises(DatabaseError, match="unknown request kind: invoice"):
        db.call("planbus_set_daily_request_limit", p_kind="invoice", p_limit=5)
    assert limit_of(db, kind)["limit"] == DEFAULT_LIMITS[kind.name]


def test_the_operator_and_the_functions_are_not_limited(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    set_limit(db, 0, kind)
    owner_lead, service_lead = leads(ADA, 2)
    sql.execute(new_request(kind), params(kind, ADA, owner_lead))
    with sql.transaction():
        sql.execute("SET LOCAL ROLE service_role")
        sql.execute(new_request(kind), params(kind, ADA, service_lead))
    assert count(sql, kind) == 2
    assert limit_of(db, kind, ADA)["used_today"] == 0


def test_a_kind_registered_again_still_limits_the_mini_app_alone(
    db: PostgresDatabase, sql: Sql, kind: AnyKind, leads: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    sql.execute(
        "SELECT planbus_private.register_request_kind(kind, table_name, complete_function,"
        " daily_limit_default) FROM planbus_private.request_kinds WHERE kind = %s",
        [kind.name],
    )
    set_limit(db, 1, kind)
    by_owner, first, second = leads(ADA, 3)
    sql.execute(new_request(kind), params(kind, ADA, by_owner))
    assert not request_as(sql, ADA, first, kind).refused
    assert request_as(sql, ADA, second, kind).sqlstate == "PT429"
    assert limit_of(db, kind, ADA)["used_today"] == 1


def test_concurrent_inserts_at_the_limit_do_not_exceed_it(
    db: PostgresDatabase,
    database_url: str,
    sql: Sql,
    kind: AnyKind,
    leads: Callable[[int, int], list[dict[str, Any]]],
) -> None:
    limit, racers = 5, 12
    set_limit(db, limit, kind)
    mine = leads(ADA, racers)

    def insert(conn: psycopg.Connection[dict[str, Any]], lead: dict[str, Any]) -> str:
        try:
            with conn.transaction():
                act_as(conn, mini_app(ADA))
                conn.execute(new_request(kind), params(kind, ADA, lead))
                time.sleep(0.02)  # hold the transaction open so the others pile up behind it
        except psycopg.Error as exc:
            return exc.sqlstate or "?"
        return "accepted"

    with connections(database_url, racers, row_factory=dict_row) as conns:
        outcomes = run_together([partial(insert, conn, lead) for conn, lead in zip(conns, mine, strict=True)])
    assert sorted(outcomes) == ["PT429"] * (racers - limit) + ["accepted"] * limit
    assert count(sql, kind) == limit


def test_under_repeatable_read_the_second_of_two_racing_inserts_fails_instead_of_slipping_past(
    db: PostgresDatabase,
    database_url: str,
    sql: Sql,
    kind: AnyKind,
    leads: Callable[[int, int], list[dict[str, Any]]],
) -> None:
    set_limit(db, 1, kind)
    first_lead, second_lead = leads(ADA, 2)
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        for conn in (first, second):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            act_as(conn, mini_app(ADA))
            conn.execute(q.SQL("SELECT count(*) FROM {}").format(q.Identifier(kind.table)))  # the snapshot
        first.execute(new_request(kind), params(kind, ADA, first_lead))

        def commit_later() -> None:
            time.sleep(0.2)
            first.commit()

        racer = threading.Thread(target=commit_later)
        racer.start()
        with pytest.raises(psycopg.Error) as refused:
            second.execute(new_request(kind), params(kind, ADA, second_lead))
        racer.join()
    assert refused.value.sqlstate in {"40001", "PT429"}
    assert count(sql, kind) == 1


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
