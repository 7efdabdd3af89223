"""Shared by the local-stack tests: a recording HTTP endpoint, polling with a deadline, a memory console,
whether a process group is still alive."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from planbus.devstack.console import Console
from support.local_http import JSONHandler, LocalServer

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

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.received.append(Received(self.path, dict(self.headers.items()), body))
                status = endpoint.statuses.pop(0) if len(endpoint.statuses) > 1 else endpoint.statuses[0]
                self.send_json(status, endpoint.answer)

        self._server = LocalServer(Handler)
        self.url = self._server.url

    @contextmanager
    def running(self) -> Iterator[RecordingEndpoint]:
        with self._server.running():
            yield self


def memory_console() -> tuple[Console, io.StringIO]:
    """A console writing to a string buffer (not a terminal: status lines print as plain lines)."""
    buffer = io.StringIO()
    return Console(buffer), buffer
