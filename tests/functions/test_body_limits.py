"""Every entry point's body limit holds on the bytes read, not on what Content-Length claims: a chunked body
(no Content-Length) of 1, 20 or 100 MB is refused after reading little more than the limit."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from support.mini_app import BOT_TOKEN, JWT_SECRET, client, init_data

SECRET = "body-limit-webhook-secret"
MB = 1024 * 1024
KB = 1024
LIMITS = {
    "handle_plan_request": 256 * KB,
    "send_due_reminders": 4 * KB,
    "reset_stale_requests": 4 * KB,
    "telegram_auth": 64 * KB,
}


class Upload:
    """A request body produced as it is read, as a chunked upload arrives: nothing is held in memory."""

    def __init__(self, size: int, head: bytes = b"") -> None:
        self.size = size
        self.head = head
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.read_bytes
        n = left if n is None or n < 0 else min(n, left)
        start = self.read_bytes
        self.read_bytes += n
        head = self.head[start : start + n]
        return head + b" " * (n - len(head))

    def readline(self, limit: int = -1) -> bytes:
        return self.read(limit)


def post_chunked(app: FlaskClient, body: Upload) -> Any:
    """POST `body` without a Content-Length, as gunicorn hands a chunked request to the application."""
    return app.post(
        "/",
        headers={
            "X-Webhook-Secret": SECRET,
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True},
    )


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("PLAN_GENERATOR", "offline")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/never-reached")


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("megabytes", [1, 20, 100])
@pytest.mark.parametrize("target", sorted(LIMITS))
def test_a_chunked_body_over_the_limit_is_refused_without_being_read_whole(
    target: str, megabytes: int
) -> None:
    body = Upload(megabytes * MB, head=b'{"limit": 5, "init_data": "')
    started = time.monotonic()

    response = post_chunked(client(target), body)

    assert response.status_code == 400
    assert response.get_json() == {"error": f"body is larger than {LIMITS[target]} bytes"}
    assert body.read_bytes == LIMITS[target] + 1
    assert time.monotonic() - started < 2


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("target", sorted(LIMITS))
def test_a_content_length_over_the_limit_is_refused_before_reading(target: str) -> None:
    body = Upload(LIMITS[target] + 1)
    response = client(target).post(
        "/",
        headers={"X-Webhook-Secret": SECRET},
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(body.size)},
    )

    assert response.status_code == 400
    assert response.get_json() == {"error": f"body is larger than {LIMITS[target]} bytes"}
    assert body.read_bytes == 0


@pytest.mark.usefixtures("configured")
@pytest.mark.parametrize("target", ["handle_plan_request", "send_due_reminders", "reset_stale_requests"])
def test_the_secret_is_checked_before_any_of_the_body_is_read(target: str) -> None:
    body = Upload(100 * MB)
    response = client(target).post(
        "/", headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input": body}
    )

    assert response.status_code == 401
    assert body.read_bytes == 0


@pytest.mark.usefixtures("configured")
def test_a_chunked_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused() -> None:
    limit = LIMITS["send_due_reminders"]
    at_limit = post_chunked(client("send_due_reminders"), Upload(limit, head=b'{"limit": 0}'))
    over = post_chunked(client("send_due_reminders"), Upload(limit + 1, head=b'{"limit": 0}'))

    # Read whole and parsed: the value is what is refused, not the size.
    assert at_limit.status_code == 400
    assert "body must be empty or" in at_limit.get_json()["error"]
    assert over.status_code == 400
    assert over.get_json() == {"error": f"body is larger than {limit} bytes"}


def test_a_chunked_body_within_the_limit_is_served(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", JWT_SECRET)
    webhook = (
        b'{"type": "INSERT", "table": "plan_requests", "schema": "public", "record": {"id": "'
        + str(uuid.uuid4()).encode()
        + b'"}, "old_record": null}'
    )
    sign_in = b'{"init_data": "' + init_data().encode() + b'"}'

    handled = post_chunked(client("handle_plan_request"), Upload(len(webhook), head=webhook))
    signed_in = post_chunked(client("telegram_auth"), Upload(len(sign_in), head=sign_in))

    assert handled.status_code == 200
    assert handled.get_json()["outcome"] == "skipped"
    assert signed_in.status_code == 200
    assert "access_token" in signed_in.get_json()
