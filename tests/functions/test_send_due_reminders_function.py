"""The send_due_reminders function through the functions-framework test client: what a scheduler sees."""

from __future__ import annotations

import json
from typing import Any

import flask.testing
import pytest
import respx

from planbus.db.postgres import PostgresDatabase
from support import mini_app
from support.reminder_rows import BASE, SEND_URL, TOKEN, Sql, add_plan, ok, refusal, reminder, sent_messages

SECRET = "scheduler-secret"
ADA = "Reminder: Send the proposal"


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_API_BASE", BASE)


def client() -> flask.testing.FlaskClient:
    return mini_app.client("send_due_reminders")


def call(body: Any = None, headers: dict[str, str] | None = None) -> Any:
    return client().post("/", json=body, headers={"X-Webhook-Secret": SECRET} if headers is None else headers)


def test_due_reminders_are_sent_to_the_owners_chat_naming_the_lead_and_the_step(
    app_env: None, bot: None, telegram: respx.MockRouter, db: PostgresDatabase, sql: Sql
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    # Arranged through the state machine: one reminder already sent, one cancelled.
    done = add_plan(sql, telegram_id=4004, full_name="Edsger Dijkstra", steps=(("Already sent", -60),))
    [held] = db.call("planbus_claim_due_reminders", p_limit=10, p_lease_seconds=60)
    db.call(
        "planbus_mark_reminder_sent", p_reminder_id=held["id"], p_attempt=1, p_via="telegram", p_message="x"
    )
    cancelled = add_plan(sql, telegram_id=3003, full_name="Alan Turing", steps=(("Cancelled step", -60),))
    db.call("planbus_cancel_lead_reminders", p_lead_id=cancelled["lead"]["id"], p_reason="lead closed")
    ada = add_plan(sql, telegram_id=1001, steps=(("Send the proposal", -120), ("Call about the pilot", 3600)))
    grace = add_plan(
        sql, telegram_id=2002, full_name="Grace Hopper", company=None, steps=(("Share the demo", -5),)
    )

    response = call()

    assert response.status_code == 200
    assert response.get_json() == {"sent": 2, "failed": 0, "retried": 0, "deferred": 0}
    assert sorted(sent_messages(route)) == [
        (1001, ADA),
        (2002, "Reminder: Share the demo"),
    ]
    for sent in (ada["reminders"][0], grace["reminders"][0]):
        row = reminder(sql, sent["id"])
        assert (row["status"], row["delivered_via"], row["attempts"]) == ("sent", "telegram", 1)
        assert row["sent_at"] is not None and row["lease_expires_at"] is None
    assert reminder(sql, ada["reminders"][1]["id"])["status"] == "scheduled"
    assert reminder(sql, cancelled["reminders"][0]["id"])["status"] == "cancelled"
    assert reminder(sql, done["reminders"][0]["id"])["attempts"] == 1


def test_without_a_bot_token_reminders_go_to_the_outbox_and_are_announced(
    app_env: None, telegram: respx.MockRouter, sql: Sql
) -> None:
    route = telegram.route().mock(side_effect=AssertionError("nothing may reach Telegram without a token"))
    [row] = add_plan(sql, telegram_id=7007)["reminders"]
    sql.execute("LISTEN planbus_outbox")

    response = call()

    assert response.status_code == 200
    assert response.get_json()["sent"] == 1
    assert route.call_count == 0
    outbox = sql.execute("SELECT reminder_id, chat_id, text FROM planbus_private.telegram_outbox").fetchall()
    assert outbox == [{"reminder_id": row["id"], "chat_id": 7007, "text": ADA}]
    after = reminder(sql, row["id"])
    assert (after["status"], after["delivered_via"]) == ("sent", "outbox")
    [notice] = list(sql.notifies(timeout=5, stop_after=1))
    assert json.loads(notice.payload)["text"] == ADA


def test_a_rejected_bot_token_is_a_503_that_does_not_show_the_token(
    app_env: None, bot: None, telegram: respx.MockRouter, sql: Sql
) -> None:
    telegram.post(SEND_URL).mock(return_value=refusal(404, "Not Found"))
    [row] = add_plan(sql)["reminders"]

    response = call()

    assert response.status_code == 503
    assert "TELEGRAM_BOT_TOKEN" in response.get_json()["error"]
    assert TOKEN not in response.get_data(as_text=True)
    assert (reminder(sql, row["id"])["status"], reminder(sql, row["id"])["attempts"]) == ("scheduled", 0)


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer wrong"}],
    ids=["none", "header", "bearer"],
)
def test_a_missing_or_wrong_secret_is_401_and_nothing_is_sent(
    app_env: None, bot: None, telegram: respx.MockRouter, sql: Sql, headers: dict[str, str]
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    [row] = add_plan(sql)["reminders"]
    response = call(headers=headers)
    assert response.status_code == 401
    assert route.call_count == 0
    assert reminder(sql, row["id"]) == row


@pytest.mark.parametrize(
    "body",
    ['{"limit": 0}', '{"limit": 10001}', '{"limit": "many"}', '{"limit": 5, "extra": 1}', "not json", "[1]"],
)
def test_a_bad_body_is_400_and_nothing_is_sent(app_env: None, sql: Sql, body: str) -> None:
    [row] = add_plan(sql)["reminders"]
    response = client().post("/", data=body, headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 400
    assert "limit" in response.get_json()["error"]
    assert reminder(sql, row["id"]) == row


def test_a_limit_in_the_body_is_honoured(app_env: None, sql: Sql) -> None:
    for i in range(3):
        add_plan(sql, telegram_id=9200 + i)
    response = client().post("/?token=" + SECRET, json={"limit": 2})
    assert response.status_code == 200
    assert response.get_json()["sent"] == 2


def test_only_post_is_served(app_env: None, sql: Sql) -> None:
    [row] = add_plan(sql)["reminders"]
    response = client().get("/", headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 405
    assert reminder(sql, row["id"]) == row


def test_without_a_configured_secret_the_function_refuses_to_serve(
    monkeypatch: pytest.MonkeyPatch, database_url: str, sql: Sql
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    [row] = add_plan(sql)["reminders"]
    response = call(headers={"X-Webhook-Secret": ""})
    assert response.status_code == 503
    assert response.get_json() == {"error": "WEBHOOK_SECRET is not set: refusing to serve"}
    assert reminder(sql, row["id"]) == row


def test_an_unreachable_database_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://planbus@127.0.0.1:9/nowhere")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    response = call()
    assert response.status_code == 503
    assert response.get_json() == {"error": "database unavailable"}
