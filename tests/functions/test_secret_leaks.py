"""A full round through the functions, with every secret configured: no log line and no answer shows one.

The round: the webhook processes a request with the offline generator, a Mini App user signs in, the
reminders of the new plan are sent over Telegram (faked with respx) with the bot token in every URL, one
of them to a user who blocked the bot, and calls with wrong secrets are refused. Everything written to
stdout (planbus's JSON lines) and every log record of any library (caplog) is searched for the secrets, in
the forms they could be printed in, and for the token and initData the round itself produced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import respx

from support.mini_app import BOT_TOKEN, JWT_SECRET, client, init_data

Sql = psycopg.Connection[dict[str, Any]]
SECRETS = {
    "WEBHOOK_SECRET": "leak-check-webhook-secret-9f8e7d6c",
    "OPENAI_API_KEY": "sk-leak-check-openai-key-5b4a3928",
    "SUPABASE_JWT_SECRET": JWT_SECRET,
    "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
}
DB_PASSWORD = "leak-check-db-password-77"
TELEGRAM = "https://telegram.test"


def with_password(url: str) -> str:
    """The same database URL with a password (trust authentication ignores it; the logs must not show it)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user or 'postgres'}:{DB_PASSWORD}@{host}"))


def forms(secret: str) -> set[str]:
    """How a secret could appear in a log line: as is, URL-encoded, JSON-escaped."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}


def test_no_secret_key_or_token_reaches_a_log_line_or_an_answer_across_a_full_round(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    sql: Sql,
    make_lead: Callable[..., dict[str, Any]],
    make_request: Callable[..., dict[str, Any]],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", with_password(database_url))
    monkeypatch.setenv("PLAN_GENERATOR", "offline")
    monkeypatch.setenv("TELEGRAM_API_BASE", TELEGRAM)
    caplog.set_level(logging.DEBUG)
    secret = SECRETS["WEBHOOK_SECRET"]
    answers: list[str] = []

    # The Mini App signs in.
    signed = init_data(1001)
    signed_in = client("telegram_auth").post("/", json={"init_data": signed})
    assert signed_in.status_code == 200
    access_token = signed_in.get_json()["access_token"]
    answers.append(signed_in.get_data(as_text=True))

    # The webhook: refused without the secret, then processed with it, the secret in the query string.
    request = make_request(make_lead(1001))
    blocked_request = make_request(make_lead(1002, "Blocked Bea"))
    webhook = client("handle_plan_request")
    for row in (request, blocked_request):
        payload = {
            "type": "INSERT",
            "table": "plan_requests",
            "schema": "public",
            "record": {"id": str(row["id"])},
        }
        refused = webhook.post("/?token=" + secret[:-1], json=payload)
        assert refused.status_code == 401
        processed = webhook.post("/?token=" + secret, json=payload)
        assert processed.status_code == 200 and processed.get_json()["outcome"] == "completed"
        answers += [refused.get_data(as_text=True), processed.get_data(as_text=True)]

    # One reminder of each plan falls due; Telegram takes the first and refuses the blocked user's.
    sql.execute("UPDATE reminders SET due_at = now() - interval '1 minute' WHERE step_index = 0")
    with respx.mock(assert_all_called=True) as telegram:
        send = telegram.post(f"{TELEGRAM}/bot{BOT_TOKEN}/sendMessage")
        send.side_effect = lambda req: (
            httpx.Response(
                403,
                json={
                    "ok": False,
                    "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user",
                },
            )
            if json.loads(req.content)["chat_id"] == 1002
            else httpx.Response(200, json={"ok": True, "result": {"message_id": 1}})
        )
        delivered = client("send_due_reminders").post("/", headers={"Authorization": f"Bearer {secret}"})
    assert delivered.status_code == 200, delivered.get_json()
    assert delivered.get_json()["sent"] == 1 and delivered.get_json()["failed"] == 1
    assert send.call_count == 2
    answers.append(delivered.get_data(as_text=True))

    out, err = capfd.readouterr()
    records = caplog.text + "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert '"request_id"' in out, "the JSON lines carry request ids"
    assert f"{TELEGRAM}/bot***/sendMessage" in records, "httpx logged the request URL, masked"
    leaked: list[str] = []
    for name, value in [*SECRETS.items(), ("database password", DB_PASSWORD)]:
        for form in forms(value):
            for where, text in [("stdout", out), ("stderr", err), ("log records", records)]:
                if form in text:
                    leaked.append(f"{name} in {where}")
            if any(form in answer for answer in answers[1:]):
                leaked.append(f"{name} in an answer")
    # What the round itself produced: the issued token, and the initData (valid for a day) with its hash.
    for name, value in [
        ("access token", access_token),
        ("initData", signed),
        ("initData hash", signed[-64:]),
    ]:
        if value in out + err + records:
            leaked.append(f"{name} in the logs")
    assert leaked == []
