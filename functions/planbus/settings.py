"""The one typed reader of the environment (contract section 3).

A plain pydantic model reads the environment itself: every function's cold start reads the settings,
and pydantic-settings would add about 50 ms to each (asyncio, argparse, dotenv) for what one validator
does here.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from planbus.errors import ConfigurationError

# What PROOF_URL_HOSTS lists: host names (dot-separated labels of letters, digits and inner hyphens).
_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")

# CLOUD_TASKS_QUEUE: a queue's full resource name (project ids may be domain-scoped, `example.com:p`).
_QUEUE_NAME = re.compile(r"projects/[a-z0-9.:-]{1,100}/locations/[a-z0-9-]{1,63}/queues/[A-Za-z0-9-]{1,100}")
_EMULATOR_HOST = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})")
_SERVICE_ACCOUNT = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# A dispatch deadline covers the kind's LLM call plus this much for the database work around it.
DISPATCH_DEADLINE_MARGIN = 30.0
# Cloud Tasks refuses HTTP-target deadlines above 30 minutes.
MAX_DISPATCH_DEADLINE = 1800.0

DEFAULT_OPENAI_MODEL = "gpt-5-mini"
# Drafts may come with a screenshot: the model must take image input (the GPT-5 family does).
DEFAULT_DRAFT_OPENAI_MODEL = DEFAULT_OPENAI_MODEL


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

    dispatch: Literal["cloud-tasks", "inline"] | None = None
    cloud_tasks_queue: str | None = Field(default=None, description="projects/P/locations/L/queues/Q")
    plan_worker_url: str | None = Field(default=None, description="URL of process_plan_request")
    draft_worker_url: str | None = Field(default=None, description="URL of process_draft_request")
    cloud_tasks_service_account: str | None = Field(default=None, description="OIDC identity of tasks")
    cloud_tasks_emulator_host: str | None = Field(default=None, description="host:port of an emulator")

    @field_validator(
        "dispatch",
        "cloud_tasks_queue",
        "plan_worker_url",
        "draft_worker_url",
        "cloud_tasks_service_account",
        "cloud_tasks_emulator_host",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `CLOUD_TASKS_QUEUE=` in an env file means "not set", not a queue named "".
        return None if isinstance(value, str) and not value.strip() else value

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

    @model_validator(mode="after")
    def _dispatch_settings_are_well_formed(self) -> Settings:
        if self.cloud_tasks_queue is not None and not _QUEUE_NAME.fullmatch(self.cloud_tasks_queue):
            raise ValueError(
                f"CLOUD_TASKS_QUEUE {self.cloud_tasks_queue[:120]!r} is not a queue name: "
                "projects/PROJECT/locations/LOCATION/queues/QUEUE"
            )
        for name, url in (
            ("PLAN_WORKER_URL", self.plan_worker_url),
            ("DRAFT_WORKER_URL", self.draft_worker_url),
        ):
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"{name} {url[:120]!r} is not an http(s) URL")
        host = self.cloud_tasks_emulator_host
        if host is not None:
            matched = _EMULATOR_HOST.fullmatch(host)
            if matched is None or not 0 < int(matched["port"]) < 65536:
                raise ValueError(
                    f"CLOUD_TASKS_EMULATOR_HOST {host[:120]!r} is not host:port (no scheme), "
                    "e.g. 127.0.0.1:9022"
                )
        account = self.cloud_tasks_service_account
        if account is not None and not _SERVICE_ACCOUNT.fullmatch(account):
            raise ValueError(f"CLOUD_TASKS_SERVICE_ACCOUNT {account[:120]!r} is not a service account email")
        return self

    @model_validator(mode="after")
    def _lease_outlives_dispatch(self) -> Settings:
        if self.dispatch_mode != "cloud-tasks":
            return self
        for kind in ("plan", "draft"):
            deadline = self.dispatch_deadline(kind)
            if deadline > MAX_DISPATCH_DEADLINE:
                raise ValueError(
                    f"the {kind} dispatch deadline ({deadline:g} s: its LLM timeout plus "
                    f"{DISPATCH_DEADLINE_MARGIN:g} s) is above Cloud Tasks' {MAX_DISPATCH_DEADLINE:g} s"
                )
            if deadline >= self.lease_seconds:
                raise ValueError(
                    f"LEASE_SECONDS ({self.lease_seconds}) must be larger than the {kind} dispatch deadline "
                    f"({deadline:g} s: its LLM timeout plus {DISPATCH_DEADLINE_MARGIN:g} s): the claim must "
                    "hold as long as Cloud Tasks waits on the worker, or the sweeper would hand the request "
                    "to a second worker while the first still runs"
                )
        return self

    @property
    def generator(self) -> Literal["openai", "offline"]:
        """The plan generator in use: explicit, else OpenAI when a key is set, else offline."""
        if self.plan_generator is not None:
            return self.plan_generator
        return "openai" if self.openai_api_key else "offline"

    @property
    def dispatch_mode(self) -> Literal["cloud-tasks", "inline"]:
        """Who runs a request's LLM call: explicit DISPATCH, else Cloud Tasks when a queue is set, else the
        webhook itself."""
        if self.dispatch is not None:
            return self.dispatch
        return "cloud-tasks" if self.cloud_tasks_queue else "inline"

    def llm_timeout(self, kind: str) -> float:
        """Seconds one LLM call of a request kind may take (DRAFT_OPENAI_TIMEOUT for drafts)."""
        return self.draft_openai_timeout if kind == "draft" else self.openai_timeout

    def dispatch_deadline(self, kind: str) -> float:
        """How long Cloud Tasks waits for a worker's answer: the kind's LLM timeout plus a margin."""
        return self.llm_timeout(kind) + DISPATCH_DEADLINE_MARGIN

    def worker_url(self, kind: str) -> str:
        """The URL Cloud Tasks calls for a kind (PLAN_WORKER_URL, DRAFT_WORKER_URL); unset is an error."""
        urls = {
            "plan": ("PLAN_WORKER_URL", self.plan_worker_url),
            "draft": ("DRAFT_WORKER_URL", self.draft_worker_url),
        }
        if kind not in urls:
            raise ConfigurationError(f"no worker URL setting for request kind {kind!r}")
        name, url = urls[kind]
        if not url:
            raise ConfigurationError(
                f"DISPATCH is cloud-tasks but {name} is not set: nowhere to send {kind} tasks"
            )
        return url

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
