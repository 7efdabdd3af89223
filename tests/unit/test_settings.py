"""The settings object: the only reader of the environment, overridden by keyword arguments."""

from __future__ import annotations

import pytest

from planbus.errors import ConfigurationError
from planbus.settings import Settings, get_settings


def test_settings_come_from_the_environment_whatever_the_case_of_the_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "240")
    monkeypatch.setenv("openai_timeout", "12.5")
    monkeypatch.setenv("WEBHOOK_SECRET", "from-the-environment")
    monkeypatch.setenv("PLANBUS_UNRELATED", "ignored")
    settings = Settings()
    assert (settings.lease_seconds, settings.openai_timeout) == (240, 12.5)
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "from-the-environment"


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("MAX_ATTEMPTS", "7")
    settings = Settings(database_url="postgresql://given/db")
    assert (settings.database_url, settings.max_attempts) == ("postgresql://given/db", 7)


def test_an_invalid_value_in_the_environment_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_ATTEMPTS", "several")
    with pytest.raises(ConfigurationError, match="max_attempts"):
        get_settings()
