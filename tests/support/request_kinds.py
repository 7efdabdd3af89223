"""Requests of every registered kind as the tests arrange them, so one test runs for each kind.

insert_request(sql, kind, lead, **columns)   a pending row of the kind, inserted as the owner
completion_for(kind)                          arguments its SQL completion step accepts
claim_request(db, kind, request_id)           the state machine's claim (its answer)
claimed_attempt(db, kind, request_id)         the same for a request that must be claimable: its attempt
complete_request(db, kind, request_id)        the one way a test completes a request through the state
                                              machine (claimed first unless an attempt is given)
ready_request(sql, db, kind, lead)            a pending request the kind can process (a draft's lead gets
                                              a plan first)
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


def claim_request(
    db: Database, kind: AnyKind, request_id: Any, *, lease: int = 60, max_attempts: int = 3
) -> Any:
    """planbus_claim_request for one request of `kind`; its answer."""
    return db.call(
        "planbus_claim_request",
        p_kind=kind.name,
        p_request_id=str(request_id),
        p_lease_seconds=lease,
        p_max_attempts=max_attempts,
    )


def claimed_attempt(db: Database, kind: AnyKind, request_id: Any, *, lease: int = 60) -> int:
    """Claim a request that must be claimable; the attempt the claim holds."""
    answer = claim_request(db, kind, request_id, lease=lease)
    assert answer["claimed"] is True, answer
    return int(answer["attempt"])


# Stands for "not given" where None is an argument worth passing (a malformed completion).
DEFAULT: Any = object()


def complete_request(
    db: Database,
    kind: AnyKind,
    request_id: Any,
    *,
    attempt: int | None = None,
    result: Any = DEFAULT,
    completion: Any = DEFAULT,
) -> Any:
    """Complete a request through the state machine and return planbus_complete_request's answer.

    Without `attempt` the request is claimed first (the claim must succeed); with it, that attempt's claim
    is completed, whatever its state. `result` defaults to a minimal one, `completion` to completion_for;
    either may be anything, to see it refused.
    """
    if attempt is None:
        attempt = claimed_attempt(db, kind, request_id)
    return db.call(
        "planbus_complete_request",
        p_kind=kind.name,
        p_request_id=str(request_id),
        p_attempt=attempt,
        p_result={"ok": True} if result is DEFAULT else result,
        p_completion=completion_for(kind) if completion is DEFAULT else completion,
    )


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
