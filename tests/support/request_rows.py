"""Reading requests of any kind as the owner, and moving a lease into the past, for the request tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as q

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]


def request_row(sql: Sql, request_id: Any, table: str = "plan_requests") -> Row:
    """The request row as stored in public.<table>."""
    row = sql.execute(
        q.SQL("SELECT * FROM public.{} WHERE id = %s").format(q.Identifier(table)), (request_id,)
    ).fetchone()
    assert row is not None
    return row


def error_history(sql: Sql, request_id: Any) -> list[tuple[int, str]]:
    """(attempt, message) of every failure recorded for the request, oldest first."""
    rows = sql.execute(
        "SELECT attempt, message FROM planbus_private.request_errors WHERE request_id = %s ORDER BY id",
        (request_id,),
    ).fetchall()
    return [(row["attempt"], row["message"]) for row in rows]


def expire_lease(sql: Sql, request_id: Any, table: str = "plan_requests") -> None:
    """Let the lease on a claimed request run out, as if its worker had died."""
    sql.execute(
        q.SQL("UPDATE public.{} SET lease_expires_at = now() - interval '1 second' WHERE id = %s").format(
            q.Identifier(table)
        ),
        (request_id,),
    )


def make_due(sql: Sql, request_id: Any, table: str = "plan_requests") -> None:
    """Let a pending request's retry time come, as if its backoff had passed."""
    sql.execute(
        q.SQL("UPDATE public.{} SET run_after = now() - interval '1 second' WHERE id = %s").format(
            q.Identifier(table)
        ),
        (request_id,),
    )
