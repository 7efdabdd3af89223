"""Reading plan requests as the owner, and moving a lease into the past, for the plan request tests."""

from __future__ import annotations

from typing import Any

import psycopg

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]


def request_row(sql: Sql, request_id: Any) -> Row:
    """The plan_requests row as stored."""
    row = sql.execute("SELECT * FROM plan_requests WHERE id = %s", (request_id,)).fetchone()
    assert row is not None
    return row


def error_history(sql: Sql, request_id: Any) -> list[tuple[int, str]]:
    """(attempt, message) of every failure recorded for the request, oldest first."""
    rows = sql.execute(
        "SELECT attempt, message FROM planbus_private.plan_request_errors WHERE request_id = %s ORDER BY id",
        (request_id,),
    ).fetchall()
    return [(row["attempt"], row["message"]) for row in rows]


def expire_lease(sql: Sql, request_id: Any) -> None:
    """Let the lease on a claimed request run out, as if its worker had died."""
    sql.execute(
        "UPDATE plan_requests SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (request_id,)
    )
