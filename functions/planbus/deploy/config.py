"""The deployment's configuration, checked before deploy.sh touches the cloud.

deploy.sh reads the env file (`NAME=value` lines) and hands its values to `planbus configure check` in
the environment, together with the list of names the file defined. Only those names count: a variable
left over in the operator's shell never changes what is checked or what is deployed. The file holds two
kinds of variables: planbus settings (every field of `planbus.settings.Settings`, upper-cased), which the
functions receive, and the deploy variables below, which only deploy.sh reads.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError

from planbus.deploy.infra import FunctionSpec, ScheduleSpec, load_functions, load_schedules
from planbus.errors import ConfigurationError
from planbus.settings import Settings, get_settings

# name -> (default shown in infra/env.example, what it means); deploy.sh applies the same defaults.
DEPLOY_VARIABLES: dict[str, tuple[str, str]] = {
    "GCP_PROJECT": ("", "Google Cloud project id the functions are deployed to"),
    "GCP_REGION": ("", "region of the functions and the Cloud Scheduler jobs, e.g. europe-west1"),
    "SCHEDULER": (
        "cloud-scheduler",
        "who calls the scheduled functions: cloud-scheduler, supabase-cron, none",
    ),
    "GCP_RUNTIME_SERVICE_ACCOUNT": ("planbus-runtime@<project>", "identity the functions run as"),
    "GCP_SCHEDULER_SERVICE_ACCOUNT": ("planbus-scheduler@<project>", "identity Cloud Scheduler calls with"),
    "SECRET_PREFIX": ("planbus", "Secret Manager ids are <prefix>-<setting-name>"),
    "REALTIME_CHANNEL": ("planbus", "InsForge realtime channel the webhook trigger publishes to"),
}
SCHEDULERS = ("cloud-scheduler", "supabase-cron", "none")
# Secret values travel in an HTTP header and in a URL's ?token=: keep them to unreserved characters.
_WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9._~-]{32,}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.gserviceaccount\.com$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,60}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9:_.-]{1,100}$")
MARGIN_SECONDS = 30


def setting_names() -> list[str]:
    """Every setting's environment variable, in the order settings.py declares them."""
    return [name.upper() for name in Settings.model_fields]


def secret_settings() -> set[str]:
    """Settings whose values go to Secret Manager: every SecretStr, and DATABASE_URL (it holds a password)."""
    secret = {"DATABASE_URL"}
    for name, field in Settings.model_fields.items():
        if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation):
            secret.add(name.upper())
    return secret


@contextlib.contextmanager
def environment_of(values: Mapping[str, str]) -> Iterator[None]:
    """Within the block the process sees exactly these settings and no other planbus setting."""
    names = set(setting_names())
    saved = {name: os.environ[name] for name in names if name in os.environ}
    try:
        for name in names:
            os.environ.pop(name, None)
        os.environ.update({name: value for name, value in values.items() if name in names})
        get_settings.cache_clear()
        yield
    finally:
        for name in names:
            os.environ.pop(name, None)
        os.environ.update(saved)
        get_settings.cache_clear()


@dataclass(frozen=True)
class Deployment:
    """A checked configuration: what deploy.sh deploys."""

    values: dict[str, str]
    settings: Settings
    functions: list[FunctionSpec]
    schedules: list[ScheduleSpec]

    def environment(self, function: FunctionSpec) -> dict[str, str]:
        """The plain (non-secret) environment variables a function is deployed with."""
        secret = secret_settings()
        names = set(setting_names())
        env = {name: value for name, value in self.values.items() if name in names and name not in secret}
        # functions-framework serves with THREADS threads: as many as requests the instance is sent.
        env["THREADS"] = str(function.concurrency)
        return env

    def warnings(self) -> list[str]:
        """What works but may surprise: features left off because their secret is not set."""
        out = []
        if self.settings.generator == "offline":
            out.append("plans come from the offline generator (set OPENAI_API_KEY for OpenAI)")
        if self.settings.telegram_bot_token is None:
            out.append(
                "TELEGRAM_BOT_TOKEN is not set: reminders are kept in the database outbox, not sent, "
                "and telegram_auth answers 503"
            )
        if self.settings.supabase_jwt_secret is None:
            out.append("SUPABASE_JWT_SECRET is not set: telegram_auth answers 503")
        return out


def check(values: Mapping[str, str], infra: Path) -> Deployment:
    """Check the env file's values and infra/ together; raise ConfigurationError listing every problem."""
    problems: list[str] = []
    known = set(setting_names()) | set(DEPLOY_VARIABLES)
    for name in values:
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            problems.append(f"unknown variable {name}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    _check_deploy_variables(values, problems)

    settings: Settings | None = None
    with environment_of(values):
        try:
            settings = Settings()
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]).upper()
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)

    functions = load_functions(infra / "functions.conf", secret_settings(), problems)
    schedules = load_schedules(infra / "schedules.conf", functions, problems)
    if settings is not None:
        _check_timeouts(settings, functions, problems)
        _check_jwt_secret(settings, problems)
    used = {name for spec in functions for name in spec.secrets}
    for name in sorted((secret_settings() & set(values)) - used):
        problems.append(f"{name} is set but no function in functions.conf reads it")
    if problems or settings is None:
        raise ConfigurationError("the configuration has problems:\n  " + "\n  ".join(problems))
    return Deployment(dict(values), settings, functions, schedules)


def _check_deploy_variables(values: Mapping[str, str], problems: list[str]) -> None:
    def need(name: str, pattern: re.Pattern[str], what: str, *, required: bool = False) -> None:
        value = values.get(name, "")
        if not value:
            if required:
                problems.append(f"{name} is not set: {what}")
        elif not pattern.match(value):
            problems.append(f"{name} {value!r} is not valid: {what}")

    need(
        "GCP_PROJECT",
        _PROJECT,
        "the Google Cloud project id (6-30 lower-case letters, digits, -)",
        required=True,
    )
    need("GCP_REGION", _REGION, "a Google Cloud region such as europe-west1", required=True)
    need("GCP_RUNTIME_SERVICE_ACCOUNT", _SERVICE_ACCOUNT, "a service account email")
    need("GCP_SCHEDULER_SERVICE_ACCOUNT", _SERVICE_ACCOUNT, "a service account email")
    need("SECRET_PREFIX", _PREFIX, "letters, digits, - and _, starting with a letter")
    need("REALTIME_CHANNEL", _CHANNEL, "a realtime channel name")
    scheduler = values.get("SCHEDULER", "")
    if scheduler and scheduler not in SCHEDULERS:
        problems.append(f"SCHEDULER must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
    url = values.get("DATABASE_URL", "")
    if not url:
        problems.append("DATABASE_URL is not set: migrations and the webhook set-up need a direct connection")
    elif not url.startswith(("postgresql://", "postgres://")):
        problems.append("DATABASE_URL must be a postgresql:// URL")
    secret = values.get("WEBHOOK_SECRET", "")
    if not secret:
        problems.append("WEBHOOK_SECRET is not set: every webhook and scheduled function requires it")
    elif not _WEBHOOK_SECRET.match(secret):
        problems.append(
            "WEBHOOK_SECRET must be at least 32 characters of A-Z a-z 0-9 . _ ~ - "
            "(it travels in a header and in a URL); make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def _check_jwt_secret(settings: Settings, problems: list[str]) -> None:
    from planbus.services.auth import MIN_JWT_SECRET_BYTES

    secret = settings.supabase_jwt_secret
    if secret is not None and len(secret.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
        problems.append(
            f"SUPABASE_JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes: use the project's JWT secret"
        )


def _check_timeouts(settings: Settings, functions: list[FunctionSpec], problems: list[str]) -> None:
    for spec in functions:
        needed: float = MARGIN_SECONDS
        parts = [f"{MARGIN_SECONDS} s margin"]
        if spec.calls_llm:
            needed += settings.openai_timeout
            parts.append(f"OPENAI_TIMEOUT {settings.openai_timeout:g}")
        if spec.batch:
            needed += settings.function_budget_seconds
            parts.append(f"FUNCTION_BUDGET_SECONDS {settings.function_budget_seconds:g}")
        if spec.timeout < needed:
            problems.append(
                f"functions.conf [{spec.target}]: timeout {spec.timeout} s is shorter than "
                f"{' + '.join(reversed(parts))} = {needed:g} s"
            )
        if spec.calls_llm and spec.timeout > settings.lease_seconds:
            problems.append(
                f"functions.conf [{spec.target}]: timeout {spec.timeout} s is longer than LEASE_SECONDS "
                f"{settings.lease_seconds}: a stale request could be taken over while its worker still runs"
            )
