"""Registering a request kind gives it the state machine's claim and completion (migration 0018 generates
them from the registry), and a change to the registry is what the next call finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from planbus.db.postgres import PostgresDatabase
from planbus.errors import DatabaseError

Row = dict[str, Any]
Conn = psycopg.Connection[dict[str, Any]]

MEMO_KIND = """
CREATE TABLE public.memo_requests (LIKE public.plan_requests INCLUDING DEFAULTS);
ALTER TABLE public.memo_requests ADD PRIMARY KEY (id);
CREATE FUNCTION planbus_private.complete_memo_request(p_request jsonb, p_completion jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('memo', p_completion -> 'memo', 'of', p_request ->> 'id') $$;
CREATE FUNCTION planbus_private.complete_memo_request_twice(p_request jsonb, p_completion jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('memo', repeat(p_completion ->> 'memo', 2)) $$;
SELECT planbus_private.register_request_kind(
  'memo', 'memo_requests', 'planbus_private.complete_memo_request(jsonb, jsonb)', NULL);
"""


@pytest.fixture
def memo(sql: Conn, make_lead: Callable[..., Row]) -> Callable[[], str]:
    """The kind `memo` registered; makes a pending memo request and returns its id."""
    sql.execute(MEMO_KIND)
    lead = make_lead()

    def make() -> str:
        row = sql.execute(
            "INSERT INTO public.memo_requests (lead_id, telegram_id) VALUES (%s, %s) RETURNING id",
            (lead["id"], lead["telegram_id"]),
        ).fetchone()
        assert row is not None
        return str(row["id"])

    return make


def claim(db: PostgresDatabase, request_id: str) -> Any:
    return db.call(
        "planbus_claim_request", p_kind="memo", p_request_id=request_id, p_lease_seconds=60, p_max_attempts=3
    )


def complete(db: PostgresDatabase, request_id: str, attempt: int) -> Any:
    return db.call(
        "planbus_complete_request",
        p_kind="memo",
        p_request_id=request_id,
        p_attempt=attempt,
        p_result={"memo": "hi"},
        p_completion={"memo": "hi"},
    )


def test_a_registered_kind_is_claimed_and_completed_through_its_own_step(
    db: PostgresDatabase, sql: Conn, memo: Callable[[], str]
) -> None:
    request_id = memo()
    claimed = claim(db, request_id)
    assert claimed["claimed"] is True
    assert claimed["attempt"] == 1
    assert claimed["request"]["id"] == request_id
    assert claimed["lead"]["id"] == claimed["request"]["lead_id"]
    assert claim(db, request_id)["reason"].startswith("held by another worker until")

    assert complete(db, request_id, 1) == {"completed": True, "memo": "hi", "of": request_id}
    assert complete(db, request_id, 1)["completed"] is False
    row = sql.execute(
        "SELECT status, result FROM public.memo_requests WHERE id = %s", (request_id,)
    ).fetchone()
    assert row == {"status": "completed", "result": {"memo": "hi"}}


def test_re_registering_a_kind_with_another_step_takes_effect_at_once(
    db: PostgresDatabase, sql: Conn, memo: Callable[[], str]
) -> None:
    first = memo()
    claim(db, first)
    assert complete(db, first, 1)["memo"] == "hi"

    sql.execute(
        "SELECT planbus_private.register_request_kind("
        "'memo', 'memo_requests', 'planbus_private.complete_memo_request_twice(jsonb, jsonb)', NULL)"
    )
    second = memo()
    claim(db, second)
    assert complete(db, second, 1) == {"completed": True, "memo": "hihi"}


def test_a_kind_taken_out_of_the_registry_is_unknown_and_its_transitions_are_gone(
    db: PostgresDatabase, sql: Conn, memo: Callable[[], str]
) -> None:
    request_id = memo()
    sql.execute("DELETE FROM planbus_private.request_kinds WHERE kind = 'memo'")

    with pytest.raises(DatabaseError, match="unknown request kind: memo") as refused:
        claim(db, request_id)
    assert refused.value.sqlstate == "22023"
    left = sql.execute(
        "SELECT count(*) AS n FROM pg_proc WHERE proname IN ('kind_claim_memo', 'kind_complete_memo')"
    ).fetchone()
    assert left == {"n": 0}
    # The registered kinds keep theirs.
    assert (
        db.call(
            "planbus_claim_request",
            p_kind="plan",
            p_request_id=request_id,
            p_lease_seconds=60,
            p_max_attempts=3,
        )["reason"]
        == "unknown request"
    )
