"""Reminder delivery: the Telegram Bot API client, the rate limits it sends under, and the local outbox.

    Sender (the port services.reminders uses: send one message, within the sender's `limits`)
    ├── TelegramSender   POST {TELEGRAM_API_BASE}/bot<token>/sendMessage over sync httpx
    └── OutboxSender     no TELEGRAM_BOT_TOKEN: the message is recorded in planbus_private.telegram_outbox
                         (planbus_mark_reminder_sent with p_via 'outbox'), which the local sink shows;
                         no limits

Telegram's limits hold per bot, across every call and instance that sends for it, so they are kept in the
database (migrations 0011, 0016): SendBudget takes a send there before each message
(planbus_take_telegram_send) and reports it over after Telegram's answer (planbus_telegram_send_done),
which spaces the chat's next message from then; a 429 pauses the bot for everyone (planbus_pause_telegram).

Telegram's answers become DeliveryError:
    200 {"ok": true}             delivered
    429 parameters.retry_after   transient with retry_after: the whole bot has to pause that long
    400, 403                     permanent: chat not found, bot blocked by the user, user deactivated
    401, 404                     ConfigurationError: the token is wrong, so no message can go out at all
    5xx, other, network errors   transient
The token is part of every request URL: it is kept out of error messages and out of httpx's log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from planbus import logs
from planbus.db import Database
from planbus.errors import ConfigurationError, DeliveryError
from planbus.settings import Settings

if TYPE_CHECKING:
    import httpx

# Telegram asks for at most about 30 messages a second in total and one a second per chat. A send counts
# against the bot from before its request leaves until a window after its answer came back (migration
# 0016), so however late a request goes out, no second at Telegram holds more than MESSAGES_PER_SECOND;
# the window has a margin for the clocks' granularity. A chat's next message counts from the answer too.
MESSAGES_PER_SECOND = 30
SEND_WINDOW_SECONDS = 1.02
CHAT_INTERVAL_SECONDS = 1.05
SEND_TIMEOUT_SECONDS = 10.0
# A sender that dies mid-send stops counting against the bot this long after it took the send.
SEND_HOLD_SECONDS = SEND_TIMEOUT_SECONDS + 5.0
# When a 429 comes without parameters.retry_after (it should not), wait this long.
DEFAULT_RETRY_AFTER_SECONDS = 5.0

log = logs.get_logger("telegram")


@dataclass(frozen=True)
class SendLimits:
    """The rate limits of one bot: `per_second` messages in any `window` s in total, one per
    `chat_interval` s to a chat."""

    bot: str
    per_second: int = MESSAGES_PER_SECOND
    chat_interval: float = CHAT_INTERVAL_SECONDS
    window: float = SEND_WINDOW_SECONDS


class Sender(Protocol):
    """Where reminder messages go."""

    via: Literal["telegram", "outbox"]
    # The limits its sends must keep, shared with every other sender of the same bot; None: no limits.
    limits: SendLimits | None

    def send(self, chat_id: int, text: str) -> None:
        """Deliver one message; raises DeliveryError (or ConfigurationError for a rejected token)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class SendBudget:
    """One bot's limits, kept in the database for every sender of that bot in every process.

    `acquire` takes a send for a chat once the bot's window, its pause and the chat allow one, waiting for
    it; `done` reports the send over. The threads of one budget ask the database one at a time (the others
    queue on a lock), so a freed send wakes one asker per process, not every waiting thread.
    """

    def __init__(
        self,
        db: Database,
        limits: SendLimits,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._db = db
        self.limits = limits
        self._sleep = sleep
        self._monotonic = monotonic
        self._asking = threading.Lock()

    def acquire(self, chat_id: int, within: float) -> int | None:
        """Wait for and take a send to the chat; its id, or None, taking nothing, when none comes within
        `within` seconds."""
        deadline = self._monotonic() + max(within, 0.0)
        while True:
            if not self._asking.acquire(timeout=max(deadline - self._monotonic(), 0.0)):
                return None
            try:
                while True:
                    answer = self._take(chat_id)
                    if answer["granted"]:
                        return int(answer["send_id"])
                    wait = float(answer["wait_seconds"])
                    if wait > deadline - self._monotonic():
                        return None
                    if not answer["window_full"]:
                        break
                    # Next in line for the bot's window: the others queue behind this thread.
                    self._sleep(wait)
            finally:
                self._asking.release()
            # Waiting for its chat (or a pause) holds up no other chat.
            self._sleep(wait)

    def _take(self, chat_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self._db.call(
            "planbus_take_telegram_send",
            p_bot=self.limits.bot,
            p_chat_id=chat_id,
            p_per_window=self.limits.per_second,
            p_window_seconds=self.limits.window,
            p_hold_seconds=SEND_HOLD_SECONDS,
        )
        return answer

    def done(self, send_id: int) -> None:
        """The send is over, whatever Telegram answered: it counts one window more from now, and its chat's
        next message waits the chat interval from now."""
        self._db.call(
            "planbus_telegram_send_done",
            p_send_id=send_id,
            p_window_seconds=self.limits.window,
            p_chat_interval_seconds=self.limits.chat_interval,
        )

    def pause(self, seconds: float) -> None:
        """Telegram asked the bot to back off: no sender takes a send for the next `seconds`."""
        self._db.call("planbus_pause_telegram", p_bot=self.limits.bot, p_seconds=max(seconds, 0.0))


def bot_id(token: str) -> str:
    """The bot's numeric id, the part of its token before the colon (not secret: it is the bot's user id)."""
    return token.split(":", 1)[0].strip() or "bot"


class _HideTokens(logging.Filter):
    """httpx logs every request URL at INFO, and the bot token is part of the URL."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = message
        for token in self.tokens:
            hidden = hidden.replace(token, "***")
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


_hide_tokens = _HideTokens()


class TelegramSender:
    """Sends messages with the Bot API's sendMessage; `limits` are Telegram's for this bot (its use case
    keeps them with a SendBudget)."""

    via: Literal["telegram", "outbox"] = "telegram"

    def __init__(
        self,
        token: str,
        *,
        api_base: str = "https://api.telegram.org",
        per_second: int = MESSAGES_PER_SECOND,
        chat_interval: float = CHAT_INTERVAL_SECONDS,
        timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        if not token:
            raise ConfigurationError("TELEGRAM_BOT_TOKEN is empty")
        self._token = token
        self._url = f"{api_base.rstrip('/')}/bot{token}/sendMessage"
        self.limits: SendLimits | None = SendLimits(bot_id(token), per_second, chat_interval)
        import httpx  # only a function that sends to Telegram pays for it

        self._client = httpx.Client(timeout=timeout)
        _hide_tokens.tokens.add(token)
        httpx_logger = logging.getLogger("httpx")
        if _hide_tokens not in httpx_logger.filters:
            httpx_logger.addFilter(_hide_tokens)

    def send(self, chat_id: int, text: str) -> None:
        import httpx

        try:
            response = self._client.post(
                self._url,
                json={"chat_id": chat_id, "text": text, "link_preview_options": {"is_disabled": True}},
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"Telegram unreachable: {self._hide(type(exc).__name__ + ': ' + str(exc))}", permanent=False
            ) from exc
        self._check(response)

    def _check(self, response: httpx.Response) -> None:
        body = _json_object(response)
        status = response.status_code
        if status == 200 and body.get("ok") is True:
            return
        code = body.get("error_code", status)
        description = body.get("description") or response.reason_phrase or "no description"
        reason = self._hide(f"Telegram {code}: {description}")
        if status == 429:
            retry_after = _retry_after(body, response)
            raise DeliveryError(reason, permanent=False, retry_after=retry_after)
        if status in (401, 404):
            raise ConfigurationError(f"Telegram rejected the bot token ({reason}): check TELEGRAM_BOT_TOKEN")
        raise DeliveryError(reason, permanent=status in (400, 403))

    def _hide(self, text: str) -> str:
        return text.replace(self._token, "***")

    def close(self) -> None:
        self._client.close()


class OutboxSender:
    """No bot token: the message is kept in the outbox when the reminder is recorded as sent via 'outbox'.

    planbus_mark_reminder_sent stores the text in planbus_private.telegram_outbox and announces it on the
    'planbus_outbox' channel, where the local dev stack's sink shows it; nothing is dropped.
    """

    via: Literal["telegram", "outbox"] = "outbox"
    limits: SendLimits | None = None

    def send(self, chat_id: int, text: str) -> None:
        log.info(
            "no TELEGRAM_BOT_TOKEN: reminder goes to the local outbox", extra={"fields": {"chat_id": chat_id}}
        )

    def close(self) -> None:
        return None


def make_sender(settings: Settings) -> Sender:
    """Telegram when a bot token is configured, else the local outbox."""
    if settings.telegram_bot_token and settings.telegram_bot_token.get_secret_value():
        return TelegramSender(
            settings.telegram_bot_token.get_secret_value(), api_base=settings.telegram_api_base
        )
    return OutboxSender()


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(body: dict[str, Any], response: httpx.Response) -> float:
    parameters = body.get("parameters")
    candidates = [
        parameters.get("retry_after") if isinstance(parameters, dict) else None,
        response.headers.get("Retry-After"),
    ]
    for candidate in candidates:
        try:
            seconds = float(candidate) if candidate is not None else None
        except (TypeError, ValueError):
            seconds = None
        if seconds is not None and seconds >= 0:
            return seconds
    return DEFAULT_RETRY_AFTER_SECONDS
