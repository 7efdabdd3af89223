"""The one typed reader of the environment (contract section 3).

A plain pydantic model reads the environment itself: every function's cold start reads the settings,
and pydantic-settings would add about 50 ms to each (asyncio, argparse, dotenv) for what one validator
does here.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from planbus.errors import ConfigurationError

DEFAULT_OPENAI_MODEL = "gpt-5-mini"


class Settings(BaseModel):
    """Every setting planbus reads; names are the environment variables of the contract.

    `Settings()` reads them from the environment (names in any case); keyword arguments override it.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None

    openai_api_key: SecretStr | None = None
    openai_model: str = DEFAULT_OPENAI_MODEL
    openai_base_url: str | None = None
    openai_timeout: float = Field(default=60.0, gt=0)
    plan_generator: Literal["openai", "offline"] | None = None

    supabase_jwt_secret: SecretStr | None = None
    telegram_auth_max_age: int = Field(default=86400, gt=0, description="oldest initData auth_date, seconds")
    access_token_ttl: int = Field(default=3600, gt=0, description="lifetime of telegram_auth tokens, seconds")

    telegram_bot_token: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"

    lease_seconds: int = Field(default=180, gt=0)
    max_attempts: int = Field(default=3, ge=1)

    lost_webhook_seconds: int = Field(default=60, ge=0, description="pending this long counts as lost")
    retention_days: int = Field(default=30, ge=1)
    reminder_hour: int = Field(default=10, ge=0, le=23, description="local hour reminders are due")
    reminder_timezone: str = "UTC"
    reminder_max_attempts: int = Field(default=5, ge=1)
    function_budget_seconds: float = Field(default=45.0, gt=0, description="work budget of a scheduled call")

    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _read_environment(cls, given: Any) -> Any:
        if not isinstance(given, dict):
            return given
        names = cls.model_fields
        environment = {name.lower(): value for name, value in os.environ.items() if name.lower() in names}
        return {**environment, **given}

    @model_validator(mode="after")
    def _lease_outlives_llm_call(self) -> Settings:
        if self.lease_seconds <= self.openai_timeout:
            raise ValueError(
                f"LEASE_SECONDS ({self.lease_seconds}) must be larger than OPENAI_TIMEOUT "
                f"({self.openai_timeout}): a claim must outlive the LLM call it covers"
            )
        return self

    @property
    def generator(self) -> Literal["openai", "offline"]:
        """The plan generator in use: explicit, else OpenAI when a key is set, else offline."""
        if self.plan_generator is not None:
            return self.plan_generator
        return "openai" if self.openai_api_key else "offline"

    def require_webhook_secret(self) -> str:
        """The shared secret; functions refuse to serve without one."""
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
            raise ConfigurationError("WEBHOOK_SECRET is not set: refusing to serve")
        return self.webhook_secret.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; tests call `get_settings.cache_clear()`."""
    try:
        return Settings()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
