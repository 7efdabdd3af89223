"""Run SQL as the Mini App does: as role `authenticated` (or `anon`) with JWT claims in request.jwt.claims.

PostgREST, Supabase and InsForge do exactly this per request: `SET LOCAL ROLE <role>` and
`set_config('request.jwt.claims', <claims as JSON>, true)` inside the request's transaction. So a test (or a
real token's decoded claims) can be run through the same row-level security the Mini App meets:

    outcome = run_as(conn, Caller("someone", "authenticated", claims), "SELECT id FROM plan_requests")
    assert not outcome.refused and outcome.rows == [...]

`conn` is an owner connection (a superuser or a role that may SET ROLE to the caller's role). Each call is
its own transaction, or a savepoint when the connection is already in one, so a refused statement leaves
the connection usable. `snapshot(conn)` reads every planbus table as the owner, to prove that a refused
statement changed nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

Role = Literal["anon", "authenticated", "service_role"]

# Every table planbus keeps, public and private, in a fixed order for snapshots.
TABLES = (
    "public.leads",
    "public.plan_requests",
    "public.draft_requests",
    "public.reminders",
    "public.telegram_users",
    "planbus_private.request_kinds",
    "planbus_private.request_errors",
    "planbus_private.settings",
    "planbus_private.telegram_outbox",
    "planbus_private.daily_request_counts",
    "planbus_private.webhook_deliveries",
)


@dataclass(frozen=True)
class Caller:
    """Who runs a statement: a database role and the JWT claims PostgREST would set for it."""

    name: str
    role: Role
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Outcome:
    """What a statement did: its rows, or the error that refused it."""

    rows: list[Any]
    sqlstate: str | None = None
    message: str | None = None

    @property
    def refused(self) -> bool:
        return self.sqlstate is not None


def claims(sub: str, *, role: Role = "authenticated", **extra: Any) -> dict[str, Any]:
    """JWT claims as Supabase and InsForge pass them (`telegram_id` only where the issuer adds it)."""
    return {"sub": sub, "role": role, "aud": role, **extra}


def act_as(conn: psycopg.Connection[Any], caller: Caller) -> None:
    """Inside an open transaction: become `caller` until that transaction (or savepoint) ends."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(caller.role)))
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [json.dumps(dict(caller.claims))])


def run_as(
    conn: psycopg.Connection[Any],
    caller: Caller,
    statement: str | sql.Composable,
    params: Mapping[str, Any] | list[Any] | None = None,
) -> Outcome:
    """Run one statement as `caller` in its own transaction (or savepoint); commit it if it succeeds."""
    try:
        with conn.transaction():
            act_as(conn, caller)
            cursor = conn.execute(statement, params)  # type: ignore[arg-type]
            rows = cursor.fetchall() if cursor.description else []
            # Back to the owner for whatever the surrounding transaction does next.
            conn.execute("RESET ROLE")
            conn.execute("SELECT set_config('request.jwt.claims', '', true)")
    except psycopg.Error as exc:
        return Outcome(rows=[], sqlstate=exc.sqlstate, message=exc.diag.message_primary or str(exc))
    return Outcome(rows=rows)


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every planbus table, read as the owner, in a comparable form."""
    state: dict[str, list[tuple[Any, ...]]] = {}
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cursor:
        for table in TABLES:
            schema, name = table.split(".")
            cursor.execute(
                sql.SQL("SELECT * FROM {}.{} ORDER BY 1").format(sql.Identifier(schema), sql.Identifier(name))
            )
            state[table] = cursor.fetchall()
    return state
