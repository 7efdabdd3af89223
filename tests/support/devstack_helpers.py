"""Shared by the local-stack tests: a recording HTTP endpoint, polling with a deadline, a memory console,
whether a process group is still alive."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from planbus.devstack.console import Console

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout:.0f} s")
        time.sleep(interval)
        value = probe()
    return value


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingEndpoint:
    """A local HTTP server standing in for a function: records each POST and answers from a script of
    status codes (the last one repeats)."""

    def __init__(self, statuses: list[int] | None = None, answer: dict[str, Any] | None = None) -> None:
        self.statuses = list(statuses or [200])
        self.answer = answer or {"outcome": "completed"}
        self.received: list[Received] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.received.append(Received(self.path, dict(self.headers.items()), body))
                status = endpoint.statuses.pop(0) if len(endpoint.statuses) > 1 else endpoint.statuses[0]
                payload = json.dumps(endpoint.answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[RecordingEndpoint]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def memory_console() -> tuple[Console, io.StringIO]:
    """A console writing to a string buffer (not a terminal: status lines print as plain lines)."""
    buffer = io.StringIO()
    return Console(buffer), buffer
