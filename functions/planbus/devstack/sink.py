"""The local Telegram: shows every reminder delivered to the outbox (no TELEGRAM_BOT_TOKEN configured).

`planbus_mark_reminder_sent(..., p_via => 'outbox')` stores the message in planbus_private.telegram_outbox
and announces it on the `planbus_outbox` channel. The sink prints each one and keeps it, so the demo and
the tests can wait for a particular reminder. After a reconnect it reads the rows it missed from the table.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from planbus.devstack.console import Console
from planbus.devstack.listener import Connection, Listener

CHANNEL = "planbus_outbox"

LATEST_ID = "SELECT coalesce(max(id), 0) FROM planbus_private.telegram_outbox"
MISSED = """
SELECT id, reminder_id::text, chat_id, text FROM planbus_private.telegram_outbox
 WHERE id > %s ORDER BY id
"""


@dataclass(frozen=True)
class OutboxMessage:
    """One message the reminder sender handed to the local Telegram."""

    id: int
    reminder_id: str | None
    chat_id: int
    text: str


class TelegramSink:
    """LISTENs on `planbus_outbox`; prints and keeps every message delivered after it started."""

    def __init__(self, database_url: str, *, console: Console) -> None:
        self.console = console
        self.messages: list[OutboxMessage] = []
        # Outbox ids before this are history; ids after it are kept once each (notifications can arrive out
        # of id order when two senders commit in the opposite order they inserted).
        self._baseline = 0
        self._seen: set[int] = set()
        self._changed = threading.Condition()
        self.listener = Listener(
            "telegram-sink",
            database_url,
            CHANNEL,
            console=console,
            on_notify=self._notified,
            on_connect=self._catch_up,
        )

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    def wait_for(self, predicate: Callable[[OutboxMessage], bool], timeout: float) -> OutboxMessage | None:
        """The first kept message matching `predicate`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((m for m in self.messages if predicate(m)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    def _catch_up(self, conn: Connection, first: bool) -> None:
        if first:
            # Only what is delivered from now on: the outbox's history is not news.
            row = conn.execute(LATEST_ID).fetchone()
            self._baseline = int(row[0]) if row else 0
            return
        for id_, reminder_id, chat_id, text in conn.execute(MISSED, (self._baseline,)).fetchall():
            self._keep(OutboxMessage(int(id_), reminder_id, int(chat_id), text))

    def _notified(self, payload: str) -> None:
        try:
            data: dict[str, Any] = json.loads(payload)
            message = OutboxMessage(
                int(data["id"]), data.get("reminder_id"), int(data["chat_id"]), str(data["text"])
            )
        except (ValueError, KeyError, TypeError):
            self.console.event("telegram-sink", "WARNING", "ignored a malformed outbox notification")
            return
        self._keep(message)

    def _keep(self, message: OutboxMessage) -> None:
        with self._changed:
            if message.id <= self._baseline or message.id in self._seen:
                return  # history, or already shown (a catch-up and a live notification can overlap)
            self._seen.add(message.id)
            self.messages.append(message)
            self._changed.notify_all()
        lines = message.text.splitlines() or [""]
        body = "\n".join(f"  │ {line}" for line in lines)
        self.console.line(
            f"  ┌─ Telegram → chat {message.chat_id}  (reminder {message.reminder_id})\n{body}\n  └─"
        )
