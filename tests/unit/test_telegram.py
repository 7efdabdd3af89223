"""The Telegram sendMessage client: what it sends, how each answer maps, the limits it declares, and its
secrecy."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import respx
from pydantic import SecretStr

from planbus.errors import ConfigurationError, DeliveryError
from planbus.settings import Settings
from planbus.telegram import OutboxSender, SendLimits, TelegramSender, make_sender

TOKEN = "123456:SECRET-bot-token"
BASE = "https://telegram.test"
SEND_URL = f"{BASE}/bot{TOKEN}/sendMessage"


@pytest.fixture
def sender() -> TelegramSender:
    return TelegramSender(TOKEN, api_base=BASE)


def answer(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def failure(status: int, description: str, **parameters: object) -> httpx.Response:
    body: dict[str, object] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return answer(status, body)


@respx.mock
def test_a_message_is_posted_to_send_message_with_the_chat_and_text(sender: TelegramSender) -> None:
    route = respx.post(SEND_URL).mock(return_value=answer(200, {"ok": True, "result": {"message_id": 1}}))
    sender.send(4242, "Reminder: Ada Lovelace")
    assert route.call_count == 1
    sent = json.loads(route.calls.last.request.content)
    assert sent["chat_id"] == 4242
    assert sent["text"] == "Reminder: Ada Lovelace"


@respx.mock
def test_429_carries_retry_after_from_the_parameters(sender: TelegramSender) -> None:
    respx.post(SEND_URL).mock(return_value=failure(429, "Too Many Requests: retry after 7", retry_after=7))
    with pytest.raises(DeliveryError) as caught:
        sender.send(1, "hi")
    assert caught.value.retry_after == 7
    assert not caught.value.permanent
    assert "429" in str(caught.value)


@respx.mock
def test_429_without_parameters_falls_back_to_the_retry_after_header(sender: TelegramSender) -> None:
    respx.post(SEND_URL).mock(
        return_value=httpx.Response(429, headers={"Retry-After": "3"}, text="slow down")
    )
    with pytest.raises(DeliveryError) as caught:
        sender.send(1, "hi")
    assert caught.value.retry_after == 3


@pytest.mark.parametrize(
    ("status", "description"),
    [
        (403, "Forbidden: bot was blocked by the user"),
        (403, "Forbidden: user is deactivated"),
        (400, "Bad Request: chat not found"),
    ],
)
@respx.mock
def test_refusals_that_cannot_change_are_permanent_with_telegrams_reason(
    sender: TelegramSender, status: int, description: str
) -> None:
    respx.post(SEND_URL).mock(return_value=failure(status, description))
    with pytest.raises(DeliveryError) as caught:
        sender.send(1, "hi")
    assert caught.value.permanent
    assert caught.value.retry_after is None
    assert str(caught.value) == f"Telegram {status}: {description}"


@pytest.mark.parametrize(
    "response",
    [
        failure(500, "Internal Server Error"),
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        answer(200, {"ok": False, "error_code": 200, "description": "odd"}),
    ],
)
@respx.mock
def test_server_errors_and_odd_answers_are_transient(
    sender: TelegramSender, response: httpx.Response
) -> None:
    respx.post(SEND_URL).mock(return_value=response)
    with pytest.raises(DeliveryError) as caught:
        sender.send(1, "hi")
    assert not caught.value.permanent
    assert caught.value.retry_after is None


@pytest.mark.parametrize("error", [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")])
@respx.mock
def test_network_errors_are_transient(sender: TelegramSender, error: Exception) -> None:
    respx.post(SEND_URL).mock(side_effect=error)
    with pytest.raises(DeliveryError, match="Telegram unreachable") as caught:
        sender.send(1, "hi")
    assert not caught.value.permanent


@pytest.mark.parametrize("status", [401, 404])
@respx.mock
def test_a_rejected_token_is_a_configuration_error_not_a_failed_message(
    sender: TelegramSender, status: int
) -> None:
    respx.post(SEND_URL).mock(return_value=failure(status, "Unauthorized"))
    with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN") as caught:
        sender.send(1, "hi")
    assert TOKEN not in str(caught.value)


@respx.mock
def test_the_token_never_reaches_an_error_message_or_a_log_line(
    sender: TelegramSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    respx.post(SEND_URL).mock(
        side_effect=[httpx.ConnectError(f"cannot reach {SEND_URL}"), answer(200, {"ok": True})]
    )
    with pytest.raises(DeliveryError) as caught:
        sender.send(1, "hi")
    sender.send(1, "hi")
    assert TOKEN not in str(caught.value)
    assert "***" in str(caught.value)
    assert "sendMessage" in caplog.text
    assert TOKEN not in caplog.text


def test_without_a_token_the_outbox_is_the_sender() -> None:
    assert isinstance(make_sender(Settings()), OutboxSender)
    assert make_sender(Settings()).via == "outbox"


def test_with_a_token_telegram_is_the_sender() -> None:
    sender = make_sender(Settings(telegram_bot_token=SecretStr(TOKEN), telegram_api_base=BASE))
    assert isinstance(sender, TelegramSender)
    assert sender.via == "telegram"
    sender.close()


def test_a_bot_sender_declares_telegrams_limits_for_its_bot_and_the_outbox_none() -> None:
    sender = TelegramSender(TOKEN, api_base=BASE)
    assert sender.limits == SendLimits(bot="123456", per_second=30, chat_interval=1.05, window=1.02)
    assert TelegramSender(TOKEN, api_base=BASE, per_second=5, chat_interval=2).limits == SendLimits(
        bot="123456", per_second=5, chat_interval=2
    )
    assert OutboxSender().limits is None
    sender.close()
