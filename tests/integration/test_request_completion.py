"""Completing a plan request: result, lead and reminders in one transaction (the plan kind's completion
step); and for every kind, one active request per lead and only rows the state machine can produce."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql as q
from psycopg.types.json import Jsonb

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError, UniqueViolation
from planbus.kinds import PLAN, AnyKind
from support.request_kinds import claimed_attempt, complete_request, insert_request

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]
MakeLead = Callable[..., Row]
MakeRequest = Callable[..., Row]
PLAN_JSON = {"summary": "call on Monday", "steps": [{"day": 1}, {"day": 3}]}
RESULT = {"plan": PLAN_JSON, "generator": "offline", "model": None}


def claim(db: PostgresDatabase, request_id: Any, kind: AnyKind = PLAN) -> int:
    return claimed_attempt(db, kind, request_id)


def complete(db: PostgresDatabase, request_id: Any, attempt: int, reminders: Any, **overrides: Any) -> Any:
    """The plan completion of `attempt` with these reminders; `overrides` replace its result or completion."""
    params = {"result": RESULT, "completion": {"plan": PLAN_JSON, "reminders": reminders}, **overrides}
    return complete_request(db, PLAN, request_id, attempt=attempt, **params)


def schedule(*steps: int, days: int = 1) -> list[dict[str, Any]]:
    due = datetime.now(UTC) + timedelta(days=days)
    return [
        {"step_index": s, "due_at": (due + timedelta(days=s)).isoformat(), "text": f"step {s}"} for s in steps
    ]


def reminders(value: Any) -> dict[str, Any]:
    """A plan completion whose reminders are `value`."""
    return {"completion": {"plan": PLAN_JSON, "reminders": value}}


def reminders_of(sql: Conn, lead: Row) -> list[Row]:
    return sql.execute(
        "SELECT plan_request_id, step_index, status, telegram_id, text, error FROM reminders"
        " WHERE lead_id = %s ORDER BY created_at, step_index",
        [lead["id"]],
    ).fetchall()


def state(sql: Conn) -> dict[str, list[Row]]:
    return {
        table: sql.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        for table in ("leads", "plan_requests", "reminders")
    }


def test_completion_writes_the_result_the_lead_and_the_reminders(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    lead = make_lead(telegram_id=4242, status="new")
    request = make_request(lead)
    attempt = claim(db, request["id"])
    answer = complete(db, request["id"], attempt, schedule(0, 1, 2))
    assert answer == {"completed": True, "reminders": 3, "cancelled_reminders": 0}

    stored = sql.execute("SELECT * FROM plan_requests WHERE id = %s", [request["id"]]).fetchone()
    assert stored is not None
    assert (stored["status"], stored["result"], stored["error"], stored["lease_expires_at"]) == (
        "completed",
        RESULT,
        None,
        None,
    )
    updated = sql.execute("SELECT * FROM leads WHERE id = %s", [lead["id"]]).fetchone()
    assert updated is not None
    assert (updated["status"], updated["plan"], updated["plan_request_id"]) == (
        "plan_ready",
        PLAN_JSON,
        request["id"],
    )
    assert updated["plan_generated_at"] == stored["updated_at"]
    assert [(r["step_index"], r["status"], r["telegram_id"]) for r in reminders_of(sql, lead)] == [
        (0, "scheduled", 4242),
        (1, "scheduled", 4242),
        (2, "scheduled", 4242),
    ]


def test_a_newer_plan_cancels_the_leads_older_scheduled_reminders_only(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    lead, other = make_lead(), make_lead(telegram_id=7, full_name="Someone Else")
    first = make_request(lead)
    complete(db, first["id"], claim(db, first["id"]), schedule(0, 1, 2))
    others = make_request(other)
    complete(db, others["id"], claim(db, others["id"]), schedule(0))
    # One of the old plan's reminders already went out: history, not to be touched.
    sql.execute(
        "UPDATE reminders SET status = 'sent', sent_at = now(), delivered_via = 'telegram'"
        " WHERE plan_request_id = %s AND step_index = 0",
        [first["id"]],
    )

    second = make_request(lead)
    answer = complete(db, second["id"], claim(db, second["id"]), schedule(0, 1))
    assert answer == {"completed": True, "reminders": 2, "cancelled_reminders": 2}
    old = [r for r in reminders_of(sql, lead) if r["plan_request_id"] == first["id"]]
    assert [(r["step_index"], r["status"]) for r in old] == [(0, "sent"), (1, "cancelled"), (2, "cancelled")]
    assert old[1]["error"] == f"superseded by plan request {second['id']}"
    new = [r for r in reminders_of(sql, lead) if r["plan_request_id"] == second["id"]]
    assert [(r["step_index"], r["status"]) for r in new] == [(0, "scheduled"), (1, "scheduled")]
    assert [r["status"] for r in reminders_of(sql, other)] == ["scheduled"]


def test_a_plan_without_reminders_completes(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    request = make_request(make_lead())
    answer = complete(db, request["id"], claim(db, request["id"]), None)
    assert answer == {"completed": True, "reminders": 0, "cancelled_reminders": 0}


def test_completion_is_all_or_nothing_when_a_write_fails_midway(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    lead = make_lead()
    first = make_request(lead)
    complete(db, first["id"], claim(db, first["id"]), schedule(0))
    second = make_request(lead)
    attempt = claim(db, second["id"])
    # Arrange a failure after the request, the lead and the old reminders have been written.
    sql.execute(
        """
        CREATE FUNCTION refuse_reminder() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'reminders are refused today'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON reminders FOR EACH ROW EXECUTE FUNCTION refuse_reminder();
        """
    )
    before = state(sql)
    with pytest.raises(DatabaseError, match="reminders are refused today"):
        complete(db, second["id"], attempt, schedule(0, 1))
    assert state(sql) == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"result": None}, "p_result must be a JSON object"),
        ({"result": ["not", "an", "object"]}, "p_result must be a JSON object"),
        ({"completion": ["plan"]}, "p_completion must be a JSON object"),
        ({"completion": {"reminders": []}}, "p_completion.plan is required"),
        ({"completion": {"plan": None, "reminders": []}}, "p_completion.plan is required"),
        (reminders({"step_index": 0}), "p_completion.reminders must be a JSON array"),
        (reminders([{"step_index": 0, "text": "hi"}]), "reminder 0 needs a due_at timestamp"),
        (
            reminders([{"due_at": "2030-01-01T10:00:00Z", "text": "hi"}]),
            "reminder 0 needs a step_index",
        ),
        (
            reminders([{"step_index": 1.5, "due_at": "2030-01-01T10:00:00Z", "text": "hi"}]),
            "reminder 0: step_index must be an integer",
        ),
        (
            reminders([{"step_index": 0, "due_at": "2030-01-01T10:00:00Z", "text": "  "}]),
            "reminder 0 needs a non-empty text",
        ),
        (reminders([*schedule(0), *schedule(0)]), "reminder 1: step_index 0 appears twice"),
        # The first offending reminder is named, by its first failing check, whatever follows it.
        (
            reminders([*schedule(0), {"step_index": 0, "due_at": "next week", "text": "hi"}]),
            "reminder 1: step_index 0 appears twice",
        ),
        (reminders([*schedule(0), "step 1", {"text": "  "}]), "reminder 1 must be an object"),
        (
            reminders([{"step_index": 0, "due_at": "next week", "text": "hi"}]),
            "invalid input syntax for type timestamp",
        ),
        # Every check but the cast passes: the first due_at that is no timestamp is the error.
        (
            reminders([*schedule(0), {"step_index": 1, "due_at": "next week", "text": "hi"}]),
            'invalid input syntax for type timestamp with time zone: "next week"',
        ),
        # A whole step_index written as a decimal is checked element by element, as before.
        (
            reminders([{"step_index": 0.0, "due_at": "2030-01-01T10:00:00Z", "text": "  "}]),
            "reminder 0 needs a non-empty text",
        ),
    ],
)
def test_a_malformed_completion_is_refused_clearly_and_changes_nothing(
    db: PostgresDatabase,
    sql: Conn,
    make_lead: MakeLead,
    make_request: MakeRequest,
    overrides: dict[str, Any],
    message: str,
) -> None:
    request = make_request(make_lead())
    attempt = claim(db, request["id"])
    before = state(sql)
    with pytest.raises(DatabaseError, match=message) as refused:
        complete(db, request["id"], attempt, schedule(0), **overrides)
    assert refused.value.sqlstate in {"22023", "22007"}
    assert state(sql) == before


def test_a_second_active_request_for_a_lead_is_a_unique_violation(
    db: PostgresDatabase, sql: Conn, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    lead = make_lead()
    first = make_kind_request(lead)
    with pytest.raises(psycopg.errors.UniqueViolation):
        make_kind_request(lead)
    claim(db, first["id"], kind)
    with pytest.raises(psycopg.errors.UniqueViolation):
        make_kind_request(lead)
    assert count(sql, kind.table) == 1


def test_a_lead_may_ask_again_once_its_request_has_finished(
    db: PostgresDatabase, kind: AnyKind, make_lead: MakeLead, make_kind_request: MakeRequest
) -> None:
    lead = make_lead()
    first = make_kind_request(lead)
    done = complete_request(db, kind, first["id"], result=RESULT)
    assert done["completed"] is True
    second = make_kind_request(lead)
    db.call(
        "planbus_fail_request",
        p_kind=kind.name,
        p_request_id=str(second["id"]),
        p_attempt=claim(db, second["id"], kind),
        p_error="refused",
        p_retryable=False,
        p_max_attempts=3,
    )
    assert make_kind_request(lead)["status"] == "pending"


def test_the_unique_violation_reaches_the_port_as_planbus_unique_violation(
    db: PostgresDatabase, sql: Conn, make_lead: MakeLead, make_request: MakeRequest
) -> None:
    lead = make_lead()
    make_request(lead)
    # A service-side insert through the port (as a future function would) is translated too.
    sql.execute(
        """
        CREATE FUNCTION planbus_test_insert(p_lead_id uuid, p_telegram_id bigint) RETURNS jsonb
        LANGUAGE sql AS $$
          INSERT INTO plan_requests (lead_id, telegram_id) VALUES (p_lead_id, p_telegram_id)
          RETURNING to_jsonb(plan_requests.*)
        $$
        """
    )
    with pytest.raises(UniqueViolation) as refused:
        db.call("planbus_test_insert", p_lead_id=str(lead["id"]), p_telegram_id=lead["telegram_id"])
    assert refused.value.sqlstate == "23505"


@pytest.mark.parametrize(
    ("status", "columns"),
    [
        ("completed", {}),
        ("failed", {}),
        ("processing", {}),
        ("pending", {"result": Jsonb({"plan": {}})}),
    ],
)
def test_the_table_refuses_rows_the_state_machine_could_never_produce(
    sql: Conn, kind: AnyKind, make_lead: MakeLead, status: str, columns: dict[str, Any]
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        insert_request(sql, kind, make_lead(), status=status, **columns)
    assert count(sql, kind.table) == 0


def count(sql: Conn, table: str) -> int:
    row = sql.execute(q.SQL("SELECT count(*) AS n FROM public.{}").format(q.Identifier(table))).fetchone()
    assert row is not None
    return int(row["n"])
