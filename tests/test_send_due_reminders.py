"""send_due_reminders against real PostgreSQL, with Telegram faked at the HTTP transport (respx)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import flask.testing
import functions_framework
import httpx
import psycopg
import pytest
import respx
from psycopg.types.json import Jsonb

from planbus.clock import SystemClock
from planbus.db.postgres import PostgresDatabase
from planbus.errors import ConfigurationError
from planbus.services.reminders import interleave_by_chat, reminder_message, send_due_reminders
from planbus.settings import Settings
from planbus.telegram import OutboxSender, RateLimiter, TelegramSender

TOKEN = "123456:SECRET-bot-token"
BASE = "https://telegram.test"
SEND_URL = f"{BASE}/bot{TOKEN}/sendMessage"
SECRET = "scheduler-secret"

Row = dict[str, Any]
Sql = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def add_plan(sql: Sql, make_lead: Callable[..., Row], make_request: Callable[..., Row]) -> Callable[..., Row]:
    """A lead with a completed plan request (the lead's current plan) and its reminders.

    `steps` are (text, seconds until due); returns {"lead", "request", "reminders"}.
    """

    def add(
        telegram_id: int = 1001,
        full_name: str = "Ada Lovelace",
        company: str | None = "Analytical Engines",
        steps: tuple[tuple[str, float], ...] = (("Send the proposal", -60),),
        lead: Row | None = None,
    ) -> Row:
        lead = lead or make_lead(telegram_id=telegram_id, full_name=full_name, company=company)
        request = make_request(lead, status="completed", result=Jsonb({"plan": "stored"}))
        sql.execute("UPDATE leads SET plan_request_id = %s WHERE id = %s", (request["id"], lead["id"]))
        reminders = []
        for index, (text, due_in) in enumerate(steps):
            row = sql.execute(
                """INSERT INTO reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
                   VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s), %s) RETURNING *""",
                (lead["id"], lead["telegram_id"], request["id"], index, due_in, text),
            ).fetchone()
            reminders.append(row)
        return {"lead": lead, "request": request, "reminders": reminders}

    return add


def reminder(sql: Sql, reminder_id: Any) -> Row:
    row = sql.execute("SELECT * FROM reminders WHERE id = %s", (reminder_id,)).fetchone()
    assert row is not None
    return row


def sent_messages(route: respx.Route) -> list[tuple[int, str]]:
    return [(body["chat_id"], body["text"]) for body in (json.loads(c.request.content) for c in route.calls)]


def fast_sender() -> TelegramSender:
    return TelegramSender(TOKEN, api_base=BASE, limiter=RateLimiter(per_second=1000, chat_interval=0))


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "result": {"message_id": 1}})


@pytest.fixture
def telegram() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)


def client() -> flask.testing.FlaskClient:
    return functions_framework.create_app("send_due_reminders", "functions/main.py").test_client()


def call(body: Any = None, headers: dict[str, str] | None = None) -> Any:
    return client().post("/", json=body, headers={"X-Webhook-Secret": SECRET} if headers is None else headers)


def test_due_reminders_are_sent_to_the_owners_chat_naming_the_lead_and_the_step(
    app_env: None,
    monkeypatch: pytest.MonkeyPatch,
    telegram: respx.MockRouter,
    sql: Sql,
    add_plan: Callable[..., Row],
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_API_BASE", BASE)
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    ada = add_plan(telegram_id=1001, steps=(("Send the proposal", -120), ("Call about the pilot", 3600)))
    grace = add_plan(
        telegram_id=2002, full_name="Grace Hopper", company=None, steps=(("Share the demo", -5),)
    )
    cancelled = add_plan(telegram_id=3003, full_name="Alan Turing", steps=(("Cancelled step", -60),))
    sql.execute("UPDATE reminders SET status = 'cancelled' WHERE id = %s", (cancelled["reminders"][0]["id"],))
    done = add_plan(telegram_id=4004, full_name="Edsger Dijkstra", steps=(("Already sent", -60),))
    sql.execute(
        "UPDATE reminders SET status = 'sent', sent_at = now(), attempts = 1 WHERE id = %s",
        (done["reminders"][0]["id"],),
    )

    response = call()

    assert response.status_code == 200
    assert response.get_json() == {"sent": 2, "failed": 0, "retried": 0, "deferred": 0, "rate_limited": 0}
    assert sorted(sent_messages(route)) == [
        (
            1001,
            "Reminder: Ada Lovelace (Analytical Engines)\nStep 1 of the engagement plan\n\nSend the proposal",
        ),
        (2002, "Reminder: Grace Hopper\nStep 1 of the engagement plan\n\nShare the demo"),
    ]
    for sent in (ada["reminders"][0], grace["reminders"][0]):
        row = reminder(sql, sent["id"])
        assert (row["status"], row["delivered_via"], row["attempts"]) == ("sent", "telegram", 1)
        assert row["sent_at"] is not None and row["lease_expires_at"] is None
    assert reminder(sql, ada["reminders"][1]["id"])["status"] == "scheduled"
    assert reminder(sql, cancelled["reminders"][0]["id"])["status"] == "cancelled"
    assert reminder(sql, done["reminders"][0]["id"])["attempts"] == 1


def test_reminders_of_a_replaced_plan_are_cancelled_not_sent(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    old = add_plan(steps=(("Old step, retried", -60), ("Old step, abandoned in flight", -60)))
    retried, in_flight = old["reminders"]
    # A retry put one back to 'scheduled'; a sender died holding the other. Then a new plan was completed.
    sql.execute(
        "UPDATE reminders SET status = 'sending', attempts = 1, lease_expires_at = now() - interval '1 s' "
        "WHERE id = %s",
        (in_flight["id"],),
    )
    new = add_plan(lead=old["lead"], steps=(("New step", -1),))

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert counts.sent == 1
    assert sent_messages(route) == [
        (
            1001,
            reminder_message(
                {
                    **new["reminders"][0],
                    "lead_name": "Ada Lovelace",
                    "company": "Analytical Engines",
                    "chat_id": 1001,
                }
            ),
        )
    ]
    for replaced in (retried, in_flight):
        row = reminder(sql, replaced["id"])
        assert row["status"] == "cancelled"
        assert row["error"] == f"superseded by plan request {new['request']['id']}"


def test_a_cancelled_in_flight_reminder_cannot_be_put_back_by_its_sender(
    db: PostgresDatabase, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    plan = add_plan()
    [claimed] = db.call("planbus_claim_due_reminders", p_limit=10, p_lease_seconds=60)
    assert db.call("planbus_cancel_lead_reminders", p_lead_id=plan["lead"]["id"], p_reason="lead closed") == {
        "cancelled": 1
    }
    answer = db.call(
        "planbus_retry_reminder",
        p_reminder_id=claimed["id"],
        p_attempt=claimed["attempt"],
        p_delay_seconds=0,
        p_error="Telegram 500",
        p_max_attempts=5,
        p_counts_as_attempt=True,
    )
    assert answer["recorded"] is False
    row = reminder(sql, claimed["id"])
    assert (row["status"], row["error"], row["lease_expires_at"]) == ("cancelled", "lead closed", None)


def test_429_reschedules_after_retry_after_without_an_attempt_and_the_rest_of_the_batch_backs_off(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    limited = httpx.Response(
        429,
        json={
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 30",
            "parameters": {"retry_after": 30},
        },
    )
    route = telegram.post(SEND_URL).mock(return_value=limited)
    ids = [add_plan(telegram_id=5000 + i)["reminders"][0]["id"] for i in range(10)]
    sender = TelegramSender(TOKEN, api_base=BASE, limiter=RateLimiter(per_second=10, chat_interval=0))

    counts = send_due_reminders(db, sender, SystemClock(), settings=Settings())

    tried = route.call_count
    assert 1 <= tried < 10
    assert counts.as_json() == {
        "sent": 0,
        "failed": 0,
        "retried": tried,
        "deferred": 10 - tried,
        "rate_limited": tried,
    }
    now = datetime.now(UTC)
    for reminder_id in ids:
        row = reminder(sql, reminder_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("scheduled", 0, None)
        assert now + timedelta(seconds=25) < row["due_at"] <= now + timedelta(seconds=30)
        assert "Too Many Requests" in row["error"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            httpx.Response(
                403,
                json={
                    "ok": False,
                    "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user",
                },
            ),
            "Telegram 403: Forbidden: bot was blocked by the user",
        ),
        (
            httpx.Response(
                400, json={"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
            ),
            "Telegram 400: Bad Request: chat not found",
        ),
    ],
)
def test_a_refused_chat_fails_the_reminder_for_good_with_telegrams_reason(
    db: PostgresDatabase,
    telegram: respx.MockRouter,
    sql: Sql,
    add_plan: Callable[..., Row],
    answer: httpx.Response,
    reason: str,
) -> None:
    telegram.post(SEND_URL).mock(return_value=answer)
    [row] = add_plan()["reminders"]

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert (counts.failed, counts.retried, counts.sent) == (1, 0, 0)
    after = reminder(sql, row["id"])
    assert (after["status"], after["error"], after["attempts"], after["sent_at"]) == (
        "failed",
        reason,
        1,
        None,
    )


@pytest.mark.parametrize(
    ("side_effect", "reason"),
    [
        (
            httpx.Response(
                500, json={"ok": False, "error_code": 500, "description": "Internal Server Error"}
            ),
            "Telegram 500: Internal Server Error",
        ),
        (httpx.ConnectError("connection refused"), "Telegram unreachable: ConnectError: connection refused"),
    ],
)
def test_a_server_or_network_error_is_retried_later_with_backoff(
    db: PostgresDatabase,
    telegram: respx.MockRouter,
    sql: Sql,
    add_plan: Callable[..., Row],
    side_effect: Any,
    reason: str,
) -> None:
    telegram.post(SEND_URL).mock(side_effect=[side_effect])
    [row] = add_plan()["reminders"]

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    assert (counts.retried, counts.failed, counts.sent) == (1, 0, 0)
    after = reminder(sql, row["id"])
    assert (after["status"], after["attempts"], after["error"]) == ("scheduled", 1, reason)
    now = datetime.now(UTC)
    assert now + timedelta(seconds=25) < after["due_at"] < now + timedelta(seconds=34)


def test_a_reminder_that_keeps_failing_fails_after_the_last_attempt_with_the_reason(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    telegram.post(SEND_URL).mock(
        return_value=httpx.Response(502, json={"ok": False, "error_code": 502, "description": "Bad Gateway"})
    )
    [row] = add_plan()["reminders"]
    sql.execute("UPDATE reminders SET attempts = 4 WHERE id = %s", (row["id"],))

    counts = send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings(reminder_max_attempts=5))

    assert counts.failed == 1
    after = reminder(sql, row["id"])
    assert (after["status"], after["attempts"]) == ("failed", 5)
    assert after["error"] == "gave up after 5 attempts: Telegram 502: Bad Gateway"


def test_a_rejected_bot_token_stops_the_call_and_gives_every_reminder_back(
    db: PostgresDatabase, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    telegram.post(SEND_URL).mock(
        return_value=httpx.Response(401, json={"ok": False, "error_code": 401, "description": "Unauthorized"})
    )
    ids = [add_plan(telegram_id=6000 + i)["reminders"][0]["id"] for i in range(3)]

    with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN"):
        send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings())

    for reminder_id in ids:
        row = reminder(sql, reminder_id)
        assert (row["status"], row["attempts"], row["lease_expires_at"]) == ("scheduled", 0, None)


def test_a_rejected_bot_token_is_a_503_that_does_not_show_the_token(
    app_env: None, monkeypatch: pytest.MonkeyPatch, telegram: respx.MockRouter, add_plan: Callable[..., Row]
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_API_BASE", BASE)
    telegram.post(SEND_URL).mock(
        return_value=httpx.Response(404, json={"ok": False, "error_code": 404, "description": "Not Found"})
    )
    add_plan()
    response = call()
    assert response.status_code == 503
    assert "TELEGRAM_BOT_TOKEN" in response.get_json()["error"]
    assert TOKEN not in response.get_data(as_text=True)


def test_without_a_bot_token_reminders_go_to_the_outbox_and_are_announced(
    app_env: None, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    route = telegram.route().mock(side_effect=AssertionError("nothing may reach Telegram without a token"))
    [row] = add_plan(telegram_id=7007)["reminders"]
    sql.execute("LISTEN planbus_outbox")

    response = call()

    assert response.status_code == 200
    assert response.get_json()["sent"] == 1
    assert route.call_count == 0
    text = "Reminder: Ada Lovelace (Analytical Engines)\nStep 1 of the engagement plan\n\nSend the proposal"
    outbox = sql.execute("SELECT reminder_id, chat_id, text FROM planbus_private.telegram_outbox").fetchall()
    assert outbox == [{"reminder_id": row["id"], "chat_id": 7007, "text": text}]
    after = reminder(sql, row["id"])
    assert (after["status"], after["delivered_via"]) == ("sent", "outbox")
    [notice] = list(sql.notifies(timeout=5, stop_after=1))
    assert json.loads(notice.payload)["text"] == text


def test_two_concurrent_calls_never_send_the_same_reminder(
    database_url: str, telegram: respx.MockRouter, add_plan: Callable[..., Row]
) -> None:
    route = telegram.post(SEND_URL).mock(side_effect=ok)
    for i in range(40):
        add_plan(telegram_id=8000 + i, steps=(("first", -60), ("second", -30)))
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        db = PostgresDatabase(database_url)
        try:
            start.wait()
            results.append(send_due_reminders(db, fast_sender(), SystemClock(), settings=Settings()).sent)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    messages = sent_messages(route)
    assert len(messages) == 80
    assert len(set(messages)) == 80
    assert sum(results) == 80


class SteppingClock:
    """Each reading is `step` later than the one before (the budget runs out after a known number)."""

    def __init__(self, step: timedelta) -> None:
        self.at = datetime.now(UTC)
        self.step = step
        self.lock = threading.Lock()

    def now(self) -> datetime:
        with self.lock:
            self.at += self.step
            return self.at


def test_reminders_left_when_the_time_budget_runs_out_go_back_unsent_without_an_attempt(
    db: PostgresDatabase, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    ids = [add_plan(telegram_id=9000 + i)["reminders"][0]["id"] for i in range(5)]
    # Readings: start, the claim loop, then one per reminder: only the first reminder is inside 25 s.
    clock = SteppingClock(timedelta(seconds=10))

    counts = send_due_reminders(db, OutboxSender(), clock, settings=Settings(function_budget_seconds=25))

    assert (counts.sent, counts.deferred) == (1, 4)
    rows = [reminder(sql, reminder_id) for reminder_id in ids]
    assert sorted(r["status"] for r in rows) == ["scheduled"] * 4 + ["sent"]
    assert all(r["attempts"] == 0 for r in rows if r["status"] == "scheduled")


def test_limit_bounds_how_many_reminders_one_call_takes(
    db: PostgresDatabase, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    for i in range(5):
        add_plan(telegram_id=9100 + i)
    counts = send_due_reminders(db, OutboxSender(), SystemClock(), settings=Settings(), limit=3)
    assert counts.sent == 3
    statuses = sql.execute(
        "SELECT status, count(*) AS n FROM reminders GROUP BY status ORDER BY status"
    ).fetchall()
    assert statuses == [{"status": "scheduled", "n": 2}, {"status": "sent", "n": 3}]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Webhook-Secret": "wrong"}, {"Authorization": "Bearer wrong"}],
    ids=["none", "header", "bearer"],
)
def test_a_missing_or_wrong_secret_is_401_and_nothing_is_sent(
    app_env: None, telegram: respx.MockRouter, sql: Sql, add_plan: Callable[..., Row], headers: dict[str, str]
) -> None:
    [row] = add_plan()["reminders"]
    response = call(headers=headers)
    assert response.status_code == 401
    assert reminder(sql, row["id"]) == row
    assert sql.execute("SELECT count(*) AS n FROM planbus_private.telegram_outbox").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    "body", ['{"limit": 0}', '{"limit": "many"}', '{"limit": 5, "extra": 1}', "not json", "[1]"]
)
def test_a_bad_body_is_400_and_nothing_is_sent(
    app_env: None, sql: Sql, add_plan: Callable[..., Row], body: str
) -> None:
    [row] = add_plan()["reminders"]
    response = client().post("/", data=body, headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 400
    assert "limit" in response.get_json()["error"]
    assert reminder(sql, row["id"]) == row


def test_a_limit_in_the_body_is_honoured(app_env: None, sql: Sql, add_plan: Callable[..., Row]) -> None:
    for i in range(3):
        add_plan(telegram_id=9200 + i)
    response = client().post("/?token=" + SECRET, json={"limit": 2})
    assert response.status_code == 200
    assert response.get_json()["sent"] == 2


def test_only_post_is_served(app_env: None, sql: Sql, add_plan: Callable[..., Row]) -> None:
    [row] = add_plan()["reminders"]
    response = client().get("/", headers={"X-Webhook-Secret": SECRET})
    assert response.status_code == 405
    assert reminder(sql, row["id"]) == row


def test_without_a_configured_secret_the_function_refuses_to_serve(
    monkeypatch: pytest.MonkeyPatch, database_url: str, sql: Sql, add_plan: Callable[..., Row]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    [row] = add_plan()["reminders"]
    response = call(headers={"X-Webhook-Secret": ""})
    assert response.status_code == 503
    assert response.get_json() == {"error": "WEBHOOK_SECRET is not set: refusing to serve"}
    assert reminder(sql, row["id"]) == row


def test_an_unreachable_database_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://planbus@127.0.0.1:9/nowhere")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    response = call()
    assert response.status_code == 503
    assert "database unavailable" in response.get_json()["error"]


def test_messages_name_the_lead_and_the_step_and_fit_telegrams_limit() -> None:
    base = {"lead_name": "Ada Lovelace", "company": "Analytical Engines", "step_index": 2, "text": "Call"}
    assert (
        reminder_message(base)
        == "Reminder: Ada Lovelace (Analytical Engines)\nStep 3 of the engagement plan\n\nCall"
    )
    long = reminder_message({**base, "text": "x" * 10_000})
    assert len(long) == 4096
    assert long.endswith("…")


def test_a_batch_takes_turns_between_chats_keeping_each_chats_order() -> None:
    batch = [{"chat_id": c, "n": n} for c, n in [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (3, 2)]]
    assert [(r["chat_id"], r["n"]) for r in interleave_by_chat(batch)] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (1, 2),
        (3, 2),
        (1, 3),
    ]
