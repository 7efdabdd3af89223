"""Arranging and reading reminders for the reminder tests, and the fake Telegram endpoint they talk to.

`add_plan` writes what planbus_complete_request leaves behind (a completed request that is the lead's
current plan, and its scheduled reminders) straight into the tables, so each test can set due times
(`make_plan` in conftest gets there through the state machine). `claim` and `expire` act as a sender does
and as time does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import respx
from psycopg.types.json import Jsonb

from planbus.db.postgres import PostgresDatabase
from planbus.telegram import TelegramSender
from support.request_rows import expire_lease

TOKEN = "123456:SECRET-bot-token"
BASE = "https://telegram.test"
SEND_URL = f"{BASE}/bot{TOKEN}/sendMessage"

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]
MakePlan = Callable[..., list[str]]  # the make_plan fixture


def add_plan(
    sql: Sql,
    telegram_id: int = 1001,
    full_name: str = "Ada Lovelace",
    company: str | None = "Analytical Engines",
    steps: tuple[tuple[str, float], ...] = (("Send the proposal", -60),),
    lead: Row | None = None,
) -> Row:
    """A lead (or `lead`) with a new current plan whose reminders are `steps`: (text, seconds until due).

    Returns {"lead", "request", "reminders"}.
    """
    if lead is None:
        lead = sql.execute(
            "INSERT INTO leads (telegram_id, full_name, company) VALUES (%s, %s, %s) RETURNING *",
            (telegram_id, full_name, company),
        ).fetchone()
        assert lead is not None
    request = sql.execute(
        "INSERT INTO plan_requests (lead_id, telegram_id, status, result) VALUES (%s, %s, 'completed', %s) "
        "RETURNING *",
        (lead["id"], lead["telegram_id"], Jsonb({"plan": "stored"})),
    ).fetchone()
    assert request is not None
    sql.execute("UPDATE leads SET plan_request_id = %s WHERE id = %s", (request["id"], lead["id"]))
    reminders = [
        sql.execute(
            """INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
               VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s), %s) RETURNING *""",
            (lead["id"], lead["telegram_id"], request["id"], index, due_in, text),
        ).fetchone()
        for index, (text, due_in) in enumerate(steps)
    ]
    return {"lead": lead, "request": request, "reminders": reminders}


def reminder(sql: Sql, reminder_id: Any) -> Row:
    row = sql.execute("SELECT * FROM reminders WHERE id = %s", (reminder_id,)).fetchone()
    assert row is not None
    return row


def claim(db: PostgresDatabase, limit: int = 10, lease: int = 60) -> list[Row]:
    """Claim due reminders as a sender does: at most `limit`, leased for `lease` seconds."""
    claimed: list[Row] = db.call("planbus_claim_due_reminders", p_limit=limit, p_lease_seconds=lease)
    return claimed


def expire(sql: Sql, reminder_id: Any) -> None:
    """Let the lease on an in-flight reminder run out, as if its sender had died."""
    expire_lease(sql, reminder_id, "reminders")


def sent_messages(route: respx.Route) -> list[tuple[int, str]]:
    """(chat_id, text) of every sendMessage the route received, in order."""
    return [(body["chat_id"], body["text"]) for body in (json.loads(c.request.content) for c in route.calls)]


def fast_sender() -> TelegramSender:
    """The real client, with its bot's limits opened up so tests do not wait."""
    return TelegramSender(TOKEN, api_base=BASE, per_second=1000, chat_interval=0)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "result": {"message_id": 1}})


def refusal(status: int, description: str, **parameters: Any) -> httpx.Response:
    """A Bot API error answer."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return httpx.Response(status, json=body)
