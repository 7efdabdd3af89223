"""A local Telegram Bot API `sendMessage` that enforces Telegram's rate limits, for tests and benchmarks.

    server = FakeTelegram("123:token", latency=0.05).start()   # server.base_url -> http://127.0.0.1:PORT
    ...                                                       # POST {base_url}/bot123:token/sendMessage
    server.stop()

Limits, as Telegram documents them: at most `per_second` messages in any one-second window across all
chats, and at least `chat_interval` seconds between two messages to one chat. A message over either limit
is answered 429 with `parameters.retry_after` (whole seconds, as Telegram sends it) and not delivered.
`latency` is a round trip: half before the request is counted, half before the answer is sent.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from support.local_http import JSONHandler, LocalServer


@dataclass
class Tally:
    delivered: list[tuple[int, str, float]] = field(default_factory=list)
    over_global: int = 0
    over_chat: int = 0

    @property
    def rejected(self) -> int:
        return self.over_global + self.over_chat

    def min_chat_gap(self) -> float | None:
        """The shortest time between two messages delivered to one chat (None if no chat got two)."""
        times: dict[int, list[float]] = {}
        for chat, _, at in self.delivered:
            times.setdefault(chat, []).append(at)
        gaps = [b - a for chat_times in times.values() for a, b in itertools.pairwise(sorted(chat_times))]
        return min(gaps, default=None)

    def busiest_second(self) -> int:
        """The most messages delivered within any one second."""
        times = sorted(at for _, _, at in self.delivered)
        start, most = 0, 0
        for end, at in enumerate(times):
            while times[start] <= at - 1.0:
                start += 1
            most = max(most, end - start + 1)
        return most


class FakeTelegram:
    def __init__(
        self, token: str, *, per_second: int = 30, chat_interval: float = 1.0, latency: float = 0.0
    ) -> None:
        self.token = token
        self.per_second = per_second
        self.chat_interval = chat_interval
        self.latency = latency
        self.tally = Tally()
        self._lock = threading.Lock()
        self._window: deque[float] = deque()
        self._last_for_chat: dict[int, float] = {}
        self._server = LocalServer(self._handler())

    @property
    def base_url(self) -> str:
        return self._server.url

    def start(self) -> FakeTelegram:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def decide(self, chat_id: int, text: str) -> tuple[int, dict[str, Any]]:
        """Deliver or refuse one message now; returns (HTTP status, Bot API answer)."""
        with self._lock:
            now = time.monotonic()
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= self.per_second:
                self.tally.over_global += 1
                return _too_many(self._window[0] + 1.0 - now)
            last = self._last_for_chat.get(chat_id)
            if last is not None and now - last < self.chat_interval:
                self.tally.over_chat += 1
                return _too_many(last + self.chat_interval - now)
            self._window.append(now)
            self._last_for_chat[chat_id] = now
            self.tally.delivered.append((chat_id, text, now))
            message_id = len(self.tally.delivered)
        return 200, {"ok": True, "result": {"message_id": message_id, "chat": {"id": chat_id}, "text": text}}

    def _handler(self) -> type[JSONHandler]:
        fake = self

        class Handler(JSONHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                time.sleep(fake.latency / 2)
                if self.path != f"/bot{fake.token}/sendMessage":
                    status, answer = 404, {"ok": False, "error_code": 404, "description": "Not Found"}
                elif not isinstance(body.get("chat_id"), int) or not body.get("text"):
                    status, answer = 400, {"ok": False, "error_code": 400, "description": "Bad Request"}
                else:
                    status, answer = fake.decide(body["chat_id"], body["text"])
                time.sleep(fake.latency / 2)
                self.send_json(status, answer)

        return Handler


def _too_many(wait: float) -> tuple[int, dict[str, Any]]:
    retry_after = max(1, math.ceil(wait))
    return 429, {
        "ok": False,
        "error_code": 429,
        "description": f"Too Many Requests: retry after {retry_after}",
        "parameters": {"retry_after": retry_after},
    }
