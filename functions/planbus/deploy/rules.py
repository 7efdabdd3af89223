"""The rules that hold the deploy variables, the settings, infra/ and the request kinds together.

Each rule appends what it finds to `problems`, so `planbus.deploy.config.check` reports every problem of
a configuration at once. The timing rules, with the defaults (OPENAI_TIMEOUT 60, DRAFT_OPENAI_TIMEOUT 90,
LEASE_SECONDS 180):

- a function that may call the LLM runs at least the longest LLM call it may make plus a margin, and no
  longer than LEASE_SECONDS, so a stale request is never taken over while its worker still runs;
- a kind's dispatch deadline (how long Cloud Tasks waits for its worker) is that kind's LLM timeout plus
  the margin; the settings keep it within Cloud Tasks' 30 minutes and below LEASE_SECONDS, and the
  worker's timeout covers it;
- each worker can take every dispatch the queue lets through at once (max_instances * concurrency at
  least max_concurrent_dispatches): a dispatch beyond that is refused with 429 and costs a task attempt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from planbus.deploy.infra import FunctionSpec, QueueSpec
from planbus.deploy.kinds import KINDS, RequestKind, kind_of
from planbus.settings import DISPATCH_DEADLINE_MARGIN, Settings

# What a function's timeout allows beyond its LLM call: the settings' margin on a dispatch deadline.
MARGIN_SECONDS = int(DISPATCH_DEADLINE_MARGIN)
SCHEDULERS = ("cloud-scheduler", "supabase-cron", "none")
# Secret values travel in an HTTP header and in a URL's ?token=: keep them to unreserved characters.
_WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9._~-]{32,}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.gserviceaccount\.com$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,60}$")
_CHANNEL = re.compile(r"^[A-Za-z0-9:_.-]{1,90}$")


def check_deploy_variables(values: Mapping[str, str], problems: list[str]) -> None:
    """Each deploy variable, and the two settings deploy itself needs: DATABASE_URL and WEBHOOK_SECRET."""

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
    need("CLOUD_TASKS_SERVICE_ACCOUNT", _SERVICE_ACCOUNT, "a service account email")
    tasks_account, project = values.get("CLOUD_TASKS_SERVICE_ACCOUNT", ""), values.get("GCP_PROJECT", "")
    if tasks_account and project and not tasks_account.endswith(f"@{project}.iam.gserviceaccount.com"):
        problems.append(
            f"CLOUD_TASKS_SERVICE_ACCOUNT must be an account of {project}: Cloud Tasks signs only with "
            "accounts of the queue's project"
        )
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


def check_kinds(functions: list[FunctionSpec], cloud_tasks: bool, problems: list[str]) -> None:
    """functions.conf describes each kind's webhook (public) and, with Cloud Tasks, its worker (tasks)."""
    by_target = {spec.target: spec for spec in functions}
    if not functions:
        return
    for kind in KINDS:
        webhook = by_target.get(kind.webhook_target)
        if webhook is None:
            problems.append(
                f"functions.conf must describe {kind.webhook_target}: new {kind.table} rows call it"
            )
        elif webhook.access != "public":
            problems.append(
                f"functions.conf [{kind.webhook_target}]: access must be public: a database webhook cannot "
                "present a Google identity (the function checks the shared secret)"
            )
        worker = by_target.get(kind.worker_target)
        if worker is None and cloud_tasks:
            problems.append(
                f"functions.conf must describe {kind.worker_target}: with DISPATCH=cloud-tasks it generates "
                f"each {kind.name} (or set DISPATCH=inline)"
            )
        elif worker is not None and (worker.access != "tasks" or not worker.calls_llm):
            problems.append(
                f"functions.conf [{kind.worker_target}]: access must be tasks and calls_llm yes: only "
                "Cloud Tasks calls it, and it makes the LLM call"
            )
    for spec in functions:
        if spec.access == "tasks" and kind_of(spec.target) is None:
            problems.append(
                f"functions.conf [{spec.target}]: access = tasks is for the workers Cloud Tasks calls "
                f"({', '.join(kind.worker_target for kind in KINDS)})"
            )


def check_timeouts(settings: Settings, functions: list[FunctionSpec], problems: list[str]) -> None:
    """Each function's timeout covers its work and, when it calls the LLM, stays within the lease."""
    for spec in functions:
        needed: float = MARGIN_SECONDS
        parts = [f"{MARGIN_SECONDS} s margin"]
        if spec.calls_llm:
            kind = longest_call(settings, spec)
            needed += kind.llm_timeout(settings)
            parts.append(f"{kind.timeout_field.upper()} {kind.llm_timeout(settings):g}")
        if spec.batch:
            needed += settings.function_budget_seconds
            parts.append(f"FUNCTION_BUDGET_SECONDS {settings.function_budget_seconds:g}")
        if spec.timeout < needed:
            why = (
                ": the dispatch deadline, which the worker's timeout must cover"
                if spec.access == "tasks"
                else ""
            )
            problems.append(
                f"functions.conf [{spec.target}]: timeout {spec.timeout} s is shorter than "
                f"{' + '.join(reversed(parts))} = {needed:g} s{why}"
            )
        if spec.calls_llm and spec.timeout > settings.lease_seconds:
            problems.append(
                f"functions.conf [{spec.target}]: timeout {spec.timeout} s is longer than LEASE_SECONDS "
                f"{settings.lease_seconds}: a stale request could be taken over while its worker still runs"
            )


def longest_call(settings: Settings, spec: FunctionSpec) -> RequestKind:
    """The kind whose LLM call bounds this function: its own kind, else (the sweeper) the longest."""
    kind = kind_of(spec.target)
    return kind or max(KINDS, key=lambda candidate: candidate.llm_timeout(settings))


def check_dispatch(
    settings: Settings, functions: list[FunctionSpec], queue: QueueSpec, problems: list[str]
) -> None:
    """Each worker can take every dispatch the queue lets through at once.

    The dispatch deadlines themselves (within Cloud Tasks' limit and below the lease) are the settings'
    to check: with DISPATCH=cloud-tasks, settings that break them do not load, and this rule is not run.
    """
    by_target = {spec.target: spec for spec in functions}
    for kind in KINDS:
        worker = by_target.get(kind.worker_target)
        if worker is not None and worker.max_instances * worker.concurrency < queue.max_concurrent_dispatches:
            problems.append(
                f"functions.conf [{kind.worker_target}]: max_instances {worker.max_instances} * concurrency "
                f"{worker.concurrency} is below the queue's max_concurrent_dispatches "
                f"{queue.max_concurrent_dispatches}: the dispatches beyond it are refused with 429"
            )


def check_jwt_secret(settings: Settings, problems: list[str]) -> None:
    """telegram_auth refuses a JWT secret shorter than HS256 calls for."""
    from planbus.services.auth import MIN_JWT_SECRET_BYTES

    secret = settings.supabase_jwt_secret
    if secret is not None and len(secret.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
        problems.append(
            f"SUPABASE_JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes: use the project's JWT secret"
        )
