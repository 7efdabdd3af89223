"""The deployment's configuration, checked before anything touches the cloud.

The values come from the env file (or the environment, see `planbus.deploy.envfile`); only those names
count: a variable left over in the operator's shell never changes what is checked or deployed. They are
of three kinds: planbus settings (every field of `planbus.settings.Settings`, upper-cased), which the
functions receive; the deploy variables below, which only deploy reads; and never the variables deploy
sets on the functions itself (`DEPLOY_SETS`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError

from planbus.deploy import rules
from planbus.deploy.infra import (
    FunctionSpec,
    QueueSpec,
    ScheduleSpec,
    load_functions,
    load_queue,
    load_schedules,
)
from planbus.deploy.kinds import KINDS
from planbus.errors import ConfigurationError
from planbus.settings import Settings, get_settings

# name -> (default shown in infra/env.example, what it means); `Deployment` applies the same defaults.
DEPLOY_VARIABLES: dict[str, tuple[str, str]] = {
    "GCP_PROJECT": ("", "Google Cloud project id the functions are deployed to"),
    "GCP_REGION": ("", "region of the functions, the queue and the Cloud Scheduler jobs, e.g. europe-west1"),
    "SCHEDULER": (
        "cloud-scheduler",
        "who calls the scheduled functions: cloud-scheduler, supabase-cron, none",
    ),
    "GCP_RUNTIME_SERVICE_ACCOUNT": ("planbus-runtime@<project>", "identity the functions run as"),
    "GCP_SCHEDULER_SERVICE_ACCOUNT": ("planbus-scheduler@<project>", "identity Cloud Scheduler calls with"),
    "SECRET_PREFIX": ("planbus", "Secret Manager ids are <prefix>-<setting-name>"),
    "REALTIME_CHANNEL": ("planbus", "InsForge realtime channels are <prefix>-<kind>"),
    "DISPATCH": ("cloud-tasks", "cloud-tasks: the webhooks enqueue, the workers generate; inline: no queue"),
    "CLOUD_TASKS_SERVICE_ACCOUNT": ("planbus-tasks@<project>", "identity Cloud Tasks calls the workers with"),
}
# What deploy sets on the functions itself, from infra/ and the deployed workers: never in the values.
DEPLOY_SETS: dict[str, str] = {
    "CLOUD_TASKS_QUEUE": "from infra/queues.conf and GCP_REGION",
    **{kind.worker_url_variable: f"the URL of the deployed {kind.worker_target}" for kind in KINDS},
    "CLOUD_TASKS_EMULATOR_HOST": "for local runs only: a deployment talks to Cloud Tasks",
}
DISPATCHES = ("cloud-tasks", "inline")
MARGIN_SECONDS = rules.MARGIN_SECONDS


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
    """A checked configuration: what deploy deploys."""

    values: dict[str, str]
    settings: Settings
    functions: list[FunctionSpec]
    schedules: list[ScheduleSpec]
    queue: QueueSpec

    def variable(self, name: str) -> str:
        """A deploy variable's value, or its default."""
        default = DEPLOY_VARIABLES[name][0].replace("<project>", f"{self.project}.iam.gserviceaccount.com")
        return self.values.get(name) or default

    @property
    def project(self) -> str:
        return self.values["GCP_PROJECT"]

    @property
    def region(self) -> str:
        return self.values["GCP_REGION"]

    @property
    def dispatch(self) -> str:
        return self.variable("DISPATCH")

    @property
    def queue_path(self) -> str:
        """CLOUD_TASKS_QUEUE: the queue's full name."""
        return f"projects/{self.project}/locations/{self.region}/queues/{self.queue.queue}"

    def spec(self, target: str) -> FunctionSpec | None:
        return next((spec for spec in self.functions if spec.target == target), None)

    def deployed(self) -> list[FunctionSpec]:
        """The functions a full deploy deploys: the workers only with DISPATCH=cloud-tasks."""
        return [spec for spec in self.functions if spec.access != "tasks" or self.dispatch == "cloud-tasks"]

    def environment(self, function: FunctionSpec, worker_urls: Mapping[str, str]) -> dict[str, str]:
        """The plain (non-secret) environment variables a function is deployed with. A function that may
        call the LLM gets the dispatch mode and, with Cloud Tasks, the queue, the identity tasks call
        with and the workers' URLs known so far (`worker_urls`, by variable name)."""
        secret = secret_settings()
        names = set(setting_names())
        # DISPATCH and CLOUD_TASKS_SERVICE_ACCOUNT are settings too, but only the functions that may call
        # the LLM get them, below.
        env = {
            name: value
            for name, value in self.values.items()
            if name in names and name not in secret and name not in DEPLOY_VARIABLES
        }
        # functions-framework serves with THREADS threads: as many as requests the instance is sent.
        env["THREADS"] = str(function.concurrency)
        if function.calls_llm:
            env["DISPATCH"] = self.dispatch
            if self.dispatch == "cloud-tasks":
                env["CLOUD_TASKS_QUEUE"] = self.queue_path
                env["CLOUD_TASKS_SERVICE_ACCOUNT"] = self.variable("CLOUD_TASKS_SERVICE_ACCOUNT")
                env.update(worker_urls)
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
        if self.dispatch == "inline":
            out.append(
                "DISPATCH=inline: the webhook functions generate within the webhook's request, which "
                "pg_net abandons after 5 s; the sweeper recovers what times out"
            )
        return out


def check(values: Mapping[str, str], infra: Path) -> Deployment:
    """Check the values and infra/ together; raise ConfigurationError listing every problem."""
    problems: list[str] = []
    known = set(setting_names()) | set(DEPLOY_VARIABLES) | set(DEPLOY_SETS)
    for name in values:
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            problems.append(f"unknown variable {name}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    for name in DEPLOY_SETS:
        if name in values:
            problems.append(f"{name} is set by deploy.sh ({DEPLOY_SETS[name]}): leave it out")
    rules.check_deploy_variables(values, problems)
    dispatch = values.get("DISPATCH") or DEPLOY_VARIABLES["DISPATCH"][0]
    if dispatch not in DISPATCHES:
        problems.append(f"DISPATCH must be one of {', '.join(DISPATCHES)}, not {dispatch!r}")

    functions = load_functions(infra / "functions.conf", secret_settings(), problems)
    schedules = load_schedules(infra / "schedules.conf", functions, problems)
    queue = load_queue(infra / "queues.conf", problems)

    settings: Settings | None = None
    # The settings are checked as the functions will see them, dispatch settings included.
    with environment_of({**values, **_dispatch_preview(values, queue)}):
        try:
            settings = Settings()
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]).upper()
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)

    rules.check_kinds(functions, dispatch == "cloud-tasks", problems)
    if settings is not None:
        rules.check_timeouts(settings, functions, problems)
        rules.check_jwt_secret(settings, problems)
        if dispatch == "cloud-tasks" and queue is not None:
            rules.check_dispatch(settings, functions, queue, problems)
    used = {name for spec in functions for name in spec.secrets}
    for name in sorted((secret_settings() & set(values)) - used):
        problems.append(f"{name} is set but no function in functions.conf reads it")
    if problems or settings is None or queue is None:
        raise ConfigurationError("the configuration has problems:\n  " + "\n  ".join(problems))
    return Deployment(dict(values), settings, functions, schedules, queue)


def _dispatch_preview(values: Mapping[str, str], queue: QueueSpec | None) -> dict[str, str]:
    """The dispatch settings deploy will set, with stand-ins for the URLs it learns only by deploying."""
    if (values.get("DISPATCH") or DEPLOY_VARIABLES["DISPATCH"][0]) != "cloud-tasks" or queue is None:
        return {"DISPATCH": "inline"}
    project, region = values.get("GCP_PROJECT", ""), values.get("GCP_REGION", "")
    default_account = DEPLOY_VARIABLES["CLOUD_TASKS_SERVICE_ACCOUNT"][0]
    return {
        "DISPATCH": "cloud-tasks",
        "CLOUD_TASKS_QUEUE": f"projects/{project}/locations/{region}/queues/{queue.queue}",
        "CLOUD_TASKS_SERVICE_ACCOUNT": values.get("CLOUD_TASKS_SERVICE_ACCOUNT")
        or default_account.replace("<project>", f"{project}.iam.gserviceaccount.com"),
        **{
            kind.worker_url_variable: f"https://{kind.worker_target.replace('_', '-')}.invalid"
            for kind in KINDS
        },
    }
