"""Reminder delivery: the Telegram Bot API client, its rate limiter, and the local outbox.

    Sender (the port services.reminders uses: wait for a send slot, send one message)
    ├── TelegramSender   POST {TELEGRAM_API_BASE}/bot<token>/sendMessage over sync httpx
    └── OutboxSender     no TELEGRAM_BOT_TOKEN: the message is recorded in planbus_private.telegram_outbox
                         (planbus_mark_reminder_sent with p_via 'outbox'), which the local sink shows

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
from typing import TYPE_CHECKING, Any, Literal, Protocol

from planbus import logs
from planbus.errors import ConfigurationError, DeliveryError
from planbus.settings import Settings

if TYPE_CHECKING:
    import httpx

# Telegram asks for at most about 30 messages a second in total and one a second per chat. Slots are
# spaced a little wider so that jitter between reserving a slot and the request arriving stays inside both.
MESSAGES_PER_SECOND = 28.0
CHAT_INTERVAL_SECONDS = 1.05
SEND_TIMEOUT_SECONDS = 10.0
# When a 429 comes without parameters.retry_after (it should not), wait this long.
DEFAULT_RETRY_AFTER_SECONDS = 5.0

log = logs.get_logger("telegram")


class Sender(Protocol):
    """Where reminder messages go."""

    via: Literal["telegram", "outbox"]

    def wait_turn(self, chat_id: int, within: float) -> bool:
        """Wait for this chat's next send slot; False, at once, when it does not come within `within` s."""
        ...

    def send(self, chat_id: int, text: str) -> None:
        """Deliver one message; raises DeliveryError (or ConfigurationError for a rejected token)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class RateLimiter:
    """Spaces sends: at most `per_second` in total and one per `chat_interval` seconds to each chat.

    A slot is reserved under the lock and waited for outside it, so concurrent senders queue in order and
    never overshoot; slots are spaced evenly rather than in bursts, as Telegram counts them.
    """

    def __init__(
        self,
        per_second: float = MESSAGES_PER_SECOND,
        chat_interval: float = CHAT_INTERVAL_SECONDS,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._spacing = 1.0 / per_second
        self._chat_interval = chat_interval
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._next_for_chat: dict[int, float] = {}

    def acquire(self, chat_id: int, within: float) -> bool:
        """Take the next slot for `chat_id` if it comes within `within` seconds, sleeping until then."""
        with self._lock:
            now = self._monotonic()
            at = max(now, self._next_slot, self._next_for_chat.get(chat_id, now))
            if at - now > within:
                return False
            self._next_slot = at + self._spacing
            self._next_for_chat[chat_id] = at + self._chat_interval
            if len(self._next_for_chat) > 4096:
                self._next_for_chat = {c: t for c, t in self._next_for_chat.items() if t > now}
        if at > now:
            self._sleep(at - now)
        return True


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
    """Sends messages with the Bot API's sendMessage, within Telegram's rate limits."""

    via: Literal["telegram", "outbox"] = "telegram"

    def __init__(
        self,
        token: str,
        *,
        api_base: str = "https://api.telegram.org",
        limiter: RateLimiter | None = None,
        timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        if not token:
            raise ConfigurationError("TELEGRAM_BOT_TOKEN is empty")
        self._token = token
        self._url = f"{api_base.rstrip('/')}/bot{token}/sendMessage"
        self._limiter = limiter or RateLimiter()
        import httpx  # only a function that sends to Telegram pays for it

        self._client = httpx.Client(timeout=timeout)
        _hide_tokens.tokens.add(token)
        httpx_logger = logging.getLogger("httpx")
        if _hide_tokens not in httpx_logger.filters:
            httpx_logger.addFilter(_hide_tokens)

    def wait_turn(self, chat_id: int, within: float) -> bool:
        return self._limiter.acquire(chat_id, within)

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

    def wait_turn(self, chat_id: int, within: float) -> bool:
        return True

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
