"""Secrets are masked in every log line, in every form they could be printed in, by every logger."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from planbus import logs
from planbus.http import database_password, register_secrets
from planbus.settings import Settings
from support.concurrency import run_together


@pytest.fixture(autouse=True)
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging as the functions configure it, with this test's secrets forgotten afterwards."""
    logs.configure("INFO")
    monkeypatch.setattr(logs, "_secrets", ())


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_registered_secret_is_masked_in_the_message_fields_and_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "sk-test-4f7a9c1e2b3d"
    logs.register_secret(secret)
    log = logs.get_logger("test")
    with logs.bind(request_id="r-1", header=f"Bearer {secret}"):
        try:
            raise RuntimeError(f"upstream said no to {secret}")
        except RuntimeError:
            log.exception("call failed with key %s", secret, extra={"fields": {"url": f"/x?token={secret}"}})
    out = capsys.readouterr().out
    assert secret not in out
    (entry,) = lines(out)
    assert entry["message"] == "call failed with key ***"
    assert entry["request_id"] == "r-1"
    assert entry["header"] == "Bearer ***"
    assert entry["url"] == "/x?token=***"
    assert "upstream said no to ***" in str(entry["exception"])


@pytest.mark.parametrize(
    "secret",
    ['quo"te\\back-slash-secret', "ünïcødé-sécret-value", "slash/plus+colon:secret", "123456:AAH-bot_token"],
)
def test_secrets_are_masked_when_json_escaped_or_url_encoded(
    capsys: pytest.CaptureFixture[str], secret: str
) -> None:
    logs.register_secret(secret)
    log = logs.get_logger("test")
    log.warning("raw %s", secret)
    log.warning("url https://api.telegram.org/bot%s/sendMessage?x=%s", quote(secret, safe=""), quote(secret))
    log.warning("json %s", json.dumps({"key": secret}))
    out = capsys.readouterr().out
    for form in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], json.dumps(secret)}:
        assert form not in out
    entries = lines(out)
    assert len(entries) == 3 and all("***" in str(entry["message"]) for entry in entries)


@pytest.mark.parametrize(
    "secret", ['quo"te\\back-slash-secret', "ünïcødé-sécret-value", "tab\tnew\nline-secret"]
)
def test_a_secret_that_json_escapes_is_masked_in_fields_keys_and_nested_values(
    capsys: pytest.CaptureFixture[str], secret: str
) -> None:
    logs.register_secret(secret)
    fields = {"header": f"Bearer {secret}", secret: 1, "nested": {"list": [f"at {secret}"]}}
    logs.get_logger("test").info("call", extra={"fields": fields})
    (entry,) = lines(capsys.readouterr().out)
    assert entry["header"] == "Bearer ***"
    assert entry["***"] == 1
    assert entry["nested"] == {"list": ["at ***"]}


def test_a_secret_containing_another_is_masked_whole(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secret("qzx1")
    logs.register_secret("qzx1-and-the-rest-of-it")
    logs.get_logger("test").info("value qzx1-and-the-rest-of-it")
    assert lines(capsys.readouterr().out)[0]["message"] == "value ***"


def test_other_libraries_log_records_are_masked_too(caplog: pytest.LogCaptureFixture) -> None:
    token = "7000000009:AAFlibraryTOKENvisibleINurls"
    logs.register_secret(token)
    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info(
            'HTTP Request: POST %s "HTTP/1.1 200 OK"', f"https://t.me/bot{token}/x"
        )
        try:
            raise ValueError(f"bad url https://t.me/bot{token}/x")
        except ValueError:
            logging.getLogger("httpx").exception("request failed")
    assert token not in caplog.text
    assert "https://t.me/bot***/x" in caplog.text
    formatted = logging.Formatter().format(caplog.records[-1])
    assert token not in formatted and "bad url https://t.me/bot***/x" in formatted


def test_short_values_are_not_treated_as_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secret("abc")
    logs.register_secret("")
    logs.register_secret(None)
    logs.get_logger("test").info("abc is not masked")
    assert lines(capsys.readouterr().out)[0]["message"] == "abc is not masked"


def test_registering_while_other_threads_log_is_safe(capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.get_logger("test")

    def write() -> None:
        for i in range(300):
            log.info("line %s", i)

    def register() -> None:
        for i in range(300):
            logs.register_secret(f"concurrently-registered-secret-{i}")

    run_together([write, write, write, write, register])
    assert len(lines(capsys.readouterr().out)) == 1200


def test_every_secret_setting_and_the_database_password_are_registered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = {
        "webhook_secret": "hook-secret-value-1",
        "openai_api_key": "sk-openai-value-2",
        "telegram_bot_token": "7000000003:AAFtoken-value-3",
        "supabase_service_role_key": "eyJservice.role.value-4",
        "supabase_jwt_secret": "jwt-secret-value-5-long-enough-for-hs256",
    }
    settings = Settings.model_validate(
        {"database_url": "postgresql://planbus:p%40ss-word-6@db.example:5432/planbus", **values}
    )
    register_secrets(settings)
    log = logs.get_logger("test")
    for value in [*values.values(), "p@ss-word-6", "p%40ss-word-6"]:
        log.info("leak %s", value)
    out = capsys.readouterr().out
    assert [entry["message"] for entry in lines(out)] == ["leak ***"] * 7


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:secret@h/db", "secret"),
        ("postgresql://u:s%2Fx%40y@h:5432/db?sslmode=require", "s/x@y"),
        ("postgresql://u@h/db", None),
        ("host=h user=u password=kv-secret dbname=db", "kv-secret"),
        ("host=h user=u", None),
        (None, None),
        ("postgresql://u:pw@[bad/db", None),
    ],
)
def test_the_database_password_is_read_from_either_url_form(url: str | None, password: str | None) -> None:
    assert database_password(url) == password
