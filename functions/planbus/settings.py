"""The one typed reader of the environment (contract section 3)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from planbus.errors import ConfigurationError

# What PROOF_URL_HOSTS lists: host names (dot-separated labels of letters, digits and inner hyphens).
_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")

DEFAULT_OPENAI_MODEL = "gpt-5-mini"
# Drafts may come with a screenshot: the model must take image input (the GPT-5 family does).
DEFAULT_DRAFT_OPENAI_MODEL = DEFAULT_OPENAI_MODEL


class Settings(BaseSettings):
    """Every setting planbus reads; names are the environment variables of the contract."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None

    openai_api_key: SecretStr | None = None
    openai_model: str = DEFAULT_OPENAI_MODEL
    openai_base_url: str | None = None
    openai_timeout: float = Field(default=60.0, gt=0)
    plan_generator: Literal["openai", "offline"] | None = None
    draft_openai_model: str = DEFAULT_DRAFT_OPENAI_MODEL
    draft_openai_timeout: float = Field(default=90.0, gt=0)
    proof_url_hosts: str | None = Field(default=None, description="comma-separated proof_url hosts")

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

    @model_validator(mode="after")
    def _lease_outlives_llm_call(self) -> Settings:
        if self.lease_seconds <= self.openai_timeout:
            raise ValueError(
                f"LEASE_SECONDS ({self.lease_seconds}) must be larger than OPENAI_TIMEOUT "
                f"({self.openai_timeout}): a claim must outlive the LLM call it covers"
            )
        if self.lease_seconds <= self.draft_openai_timeout:
            raise ValueError(
                f"LEASE_SECONDS ({self.lease_seconds}) must be larger than DRAFT_OPENAI_TIMEOUT "
                f"({self.draft_openai_timeout}): a claim must outlive the LLM call it covers"
            )
        return self

    @model_validator(mode="after")
    def _proof_url_hosts_are_hosts(self) -> Settings:
        for host in self._listed_proof_url_hosts():
            if len(host) > 253 or not _HOST_NAME.fullmatch(host):
                raise ValueError(
                    f"PROOF_URL_HOSTS entry {host[:80]!r} is not a host name "
                    "(no scheme, port or path), e.g. your-project-ref.supabase.co"
                )
        return self

    @property
    def generator(self) -> Literal["openai", "offline"]:
        """The plan generator in use: explicit, else OpenAI when a key is set, else offline."""
        if self.plan_generator is not None:
            return self.plan_generator
        return "openai" if self.openai_api_key else "offline"

    @property
    def proof_url_allowed_hosts(self) -> frozenset[str]:
        """Host names (lower case) a draft request's proof_url may name: PROOF_URL_HOSTS, else the host of
        SUPABASE_URL (Supabase Storage serves the project's files there), else none: every URL is refused."""
        listed = self._listed_proof_url_hosts()
        if listed:
            return frozenset(listed)
        host = urlsplit(self.supabase_url).hostname if self.supabase_url else None
        return frozenset({host}) if host else frozenset()

    def _listed_proof_url_hosts(self) -> list[str]:
        return [part.strip().lower() for part in (self.proof_url_hosts or "").split(",") if part.strip()]

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
