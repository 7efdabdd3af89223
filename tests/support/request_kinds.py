"""Requests of every registered kind as the tests arrange them, so one test runs for each kind.

insert_request(sql, kind, lead, **columns)   a pending row of the kind, inserted as the owner
completion_for(kind)                          arguments its SQL completion step accepts
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql as q

from planbus.clock import SystemClock
from planbus.db import Database
from planbus.kinds import PLAN, AnyKind
from planbus.services.requests import process_request
from planbus.settings import Settings

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]

# What a row of each kind needs besides lead_id and telegram_id.
INSERT_DEFAULTS: dict[str, dict[str, Any]] = {"plan": {}, "draft": {"step_index": 0}}


def insert_request(sql: Sql, kind: AnyKind, lead: Row, **columns: Any) -> Row:
    """Insert a request of `kind` for `lead` (pending unless `columns` say otherwise); returns the row."""
    values = {
        "lead_id": lead["id"],
        "telegram_id": lead["telegram_id"],
        **INSERT_DEFAULTS[kind.name],
        **columns,
    }
    row = sql.execute(
        q.SQL("INSERT INTO public.{} ({}) VALUES ({}) RETURNING *").format(
            q.Identifier(kind.table),
            q.SQL(", ").join(map(q.Identifier, values)),
            q.SQL(", ").join(q.Placeholder(name) for name in values),
        ),
        values,
    ).fetchone()
    assert row is not None
    return row


def completion_for(kind: AnyKind) -> dict[str, Any]:
    """A completion the kind's SQL step accepts, with nothing further to schedule."""
    if kind.name == "plan":
        return {"plan": {"summary": "call on Monday"}, "reminders": []}
    return {"plan_request_id": None, "step_index": 0, "reminder_text": "Step 1: call on Monday"}


def ready_request(sql: Sql, db: Database, kind: AnyKind, lead: Row, **columns: Any) -> Row:
    """A pending request of `kind` that the kind can process: a draft's lead first gets a plan, made by the
    plan kind's own use case with the offline generator."""
    if kind.name == "draft":
        plan = insert_request(sql, PLAN, lead)
        settings = Settings(plan_generator="offline")
        done = process_request(
            PLAN, db, PLAN.generator(settings), SystemClock(), str(plan["id"]), settings=settings
        )
        assert done.outcome == "completed", done
    return insert_request(sql, kind, lead, **columns)
