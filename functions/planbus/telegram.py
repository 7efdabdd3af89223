"""Reminder delivery: the Telegram Bot API client, the rate limits it sends under, and the local outbox.

    Sender (the port services.reminders uses: send one message, within the sender's `limits`)
    ├── TelegramSender   POST {TELEGRAM_API_BASE}/bot<token>/sendMessage over sync httpx
    └── OutboxSender     no TELEGRAM_BOT_TOKEN: the message is recorded in planbus_private.telegram_outbox
                         (planbus_mark_reminder_sent with p_via 'outbox'), which the local sink shows;
                         no limits

Telegram's limits hold per bot, across every call and instance that sends for it, so they are kept in the
database (migration 0011): SendBudget takes a slot there before each message (planbus_take_telegram_slot),
spaces a chat's next message from the moment one was delivered (planbus_telegram_delivered), and pauses
the bot for everyone after a 429 (planbus_pause_telegram).

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

# Telegram asks for at most about 30 messages a second in total and one a second per chat. Slots are
# spaced wider, so that jitter between a slot and the request's arrival (a thread waking late, the
# network) stays inside both: 40 ms apart puts at most 26 in any second, four short of 30 (measured on a
# busy machine, arrivals lagged their slots by 3 to 100 ms; at 28/s, 29 slots fit in one second, and such
# lags made 31); a chat's next slot counts from its last delivery (planbus_telegram_delivered).
MESSAGES_PER_SECOND = 25.0
CHAT_INTERVAL_SECONDS = 1.05
SEND_TIMEOUT_SECONDS = 10.0
# When a 429 comes without parameters.retry_after (it should not), wait this long.
DEFAULT_RETRY_AFTER_SECONDS = 5.0

log = logs.get_logger("telegram")


@dataclass(frozen=True)
class SendLimits:
    """The rate limits of one bot: `per_second` messages in total, one per `chat_interval` s to a chat."""

    bot: str
    per_second: float = MESSAGES_PER_SECOND
    chat_interval: float = CHAT_INTERVAL_SECONDS


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

    `acquire` reserves the next slot for a chat (evenly spaced at `per_second` in total, `chat_interval`
    apart per chat) and sleeps until it; slots are handed out in order across all callers, so overlapping
    calls and instances add up to the limits, not past them.
    """

    def __init__(self, db: Database, limits: SendLimits, *, sleep: Callable[[float], None] = time.sleep):
        self._db = db
        self.limits = limits
        self._sleep = sleep

    def acquire(self, chat_id: int, within: float) -> bool:
        """Wait for and take the chat's next slot; False, at once and taking nothing, when it does not
        come within `within` seconds."""
        answer = self._db.call(
            "planbus_take_telegram_slot",
            p_bot=self.limits.bot,
            p_chat_id=chat_id,
            p_within_seconds=max(within, 0.0),
            p_per_second=self.limits.per_second,
            p_chat_interval_seconds=self.limits.chat_interval,
        )
        if not answer["granted"]:
            return False
        wait = float(answer["wait_seconds"])
        if wait > 0:
            self._sleep(wait)
        return True

    def delivered(self, chat_id: int) -> None:
        """A message reached the chat just now: its next one waits the chat interval from now, however
        late this one went out."""
        self._db.call(
            "planbus_telegram_delivered",
            p_bot=self.limits.bot,
            p_chat_id=chat_id,
            p_chat_interval_seconds=self.limits.chat_interval,
        )

    def pause(self, seconds: float) -> None:
        """Telegram asked the bot to back off: no sender takes a slot for the next `seconds`."""
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
        per_second: float = MESSAGES_PER_SECOND,
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
