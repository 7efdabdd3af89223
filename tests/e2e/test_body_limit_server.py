"""Oversized chunked uploads against the real server (functions-framework on gunicorn): each target answers
400 at once and its worker's memory does not grow with the upload."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from support.function_server import FunctionServer, function_server

pytestmark = pytest.mark.e2e

SECRET = "body-limit-server-secret"
MB = 1024 * 1024
LIMITS = {
    "handle_plan_request": 256 * 1024,
    "send_due_reminders": 4 * 1024,
    "reset_stale_requests": 4 * 1024,
    "telegram_auth": 64 * 1024,
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FunctionServer]]:
    # No database: every refusal here comes before the first query.
    env = {"WEBHOOK_SECRET": SECRET, "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/never-reached"}
    with (
        function_server("handle_plan_request", env) as webhook,
        function_server("send_due_reminders", env) as reminders,
        function_server("reset_stale_requests", env) as sweeper,
        function_server("telegram_auth", env) as auth,
    ):
        yield {
            "handle_plan_request": webhook,
            "send_due_reminders": reminders,
            "reset_stale_requests": sweeper,
            "telegram_auth": auth,
        }


def upload_chunked(url: str, size: int) -> tuple[bytes, float, int]:
    """POST `size` bytes with Transfer-Encoding: chunked over a raw socket, reading the answer while still
    sending. Returns (answer, seconds to the answer, bytes the server let us send)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST / HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Webhook-Secret: {SECRET}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % (64 * 1024) + b"[" * (64 * 1024) + b"\r\n"
    sent = [0]

    def send() -> None:
        try:
            sock.sendall(head.encode())
            while sent[0] < size:
                sock.sendall(chunk)
                sent[0] += 64 * 1024
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            return  # the server answered and closed: the rest is refused

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        elapsed = time.monotonic() - started
        sock.close()
        sender.join(10)
    return answer, elapsed, sent[0]


@pytest.mark.parametrize("target", sorted(LIMITS))
def test_a_100_mb_chunked_upload_is_refused_at_once_without_the_worker_growing(
    servers: dict[str, FunctionServer], target: str
) -> None:
    server = servers[target]
    upload_chunked(server.url, 1 * MB)  # the worker's first request loads the code: measure after it
    before = server.worker_rss_kb()

    answer, seconds, sent = upload_chunked(server.url, 100 * MB)

    after = server.worker_rss_kb()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), answer[:300]
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "error": f"body is larger than {LIMITS[target]} bytes"
    }
    assert seconds < 2, seconds
    assert sent < 100 * MB, "the server kept reading the refused upload"
    assert after - before < 10 * 1024, (before, after)
