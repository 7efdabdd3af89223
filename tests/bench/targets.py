"""How the benchmarks reach planbus: the one module that knows its targets, SQL functions and settings.

Everything a benchmark does to planbus goes through here, so that when the request state machine, the
dispatch path or the status report change, only this module (and data.py, for the columns it fills)
follows. By benchmark:

    pickup        PICKUP_PATHS: how an insert reaches the worker (the local relay, inline; and the webhook
                  enqueueing on the Cloud Tasks emulator, which calls the worker); cloud_tasks_path, for
                  the webhook's own answer
    throughput    WORKER_TARGET, worker_body, outcome_of: how to ask the worker to process one request
    profile       claim_sql, complete_sql, sample_result: the claim and completion as SQL, and a result
    insert        as_mini_app: the statements PostgREST runs for a signed-in user
    scale         scale_operations: each hot statement, as it is called today
    cold start    first_request: one meaningful first call per target of functions/main.py (the ones
                  tests/support/first_requests.py defines)
    reminders     REMINDERS_TARGET, reminder_env
    drill, faults request_path (webhook and worker servers), WEBHOOK_CHANNEL, webhook_body,
                  SWEEPER_TARGET, LEASE_EXPIRED, function_env; fail_for_good: the worker's use case
                  in process against an API that keeps failing
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from servers import FunctionServer, running

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
MAIN = ROOT / "functions" / "main.py"
SECRET = "bench-webhook-secret-3b6f1c0e"
BOT_TOKEN = "7000000001:AAFbenchTOKENforPLANBUSsignINchecks_0"
JWT_SECRET = "bench-jwt-secret-with-at-least-32-characters"

# The table and statuses the benchmarks watch (bench.transitions records its status changes).
REQUESTS_TABLE = "public.plan_requests"
CLAIMED = "processing"
COMPLETED = "completed"
FINISHED = ("completed", "failed")

# The kind of request the benchmarks make (the state machine's SQL functions take it first).
KIND = "plan"
# The target that takes one request from pending to completed (what Cloud Tasks calls), and the webhook
# the database calls (inline, it does the work itself; with Cloud Tasks, it enqueues for the worker).
WORKER_TARGET = "process_plan_request"
WEBHOOK_TARGET = "handle_plan_request"
# Where the local trigger publishes each insert (pg_notify), and what the relay posts to the webhook.
WEBHOOK_CHANNEL = "planbus_events"
SWEEPER_TARGET = "reset_stale_requests"
REMINDERS_TARGET = "send_due_reminders"


def headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}


def function_env(database_url: str, **settings: object) -> dict[str, str | None]:
    """The environment of a planbus function server: this database, the secret, the offline generator,
    INFO logs as deployed, inline dispatch, no Supabase, OpenAI or Cloud Tasks from the caller's shell;
    `settings` (lower_case names of the settings) override."""
    env: dict[str, str | None] = {
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        "PLAN_GENERATOR": "offline",
        "LOG_LEVEL": "INFO",
        "SUPABASE_URL": None,
        "SUPABASE_SERVICE_ROLE_KEY": None,
        "OPENAI_API_KEY": None,
        "OPENAI_BASE_URL": None,
        "TELEGRAM_BOT_TOKEN": None,
        "DISPATCH": "inline",
        "CLOUD_TASKS_QUEUE": None,
        "CLOUD_TASKS_EMULATOR_HOST": None,
        "CLOUD_TASKS_SERVICE_ACCOUNT": None,
        "PLAN_WORKER_URL": None,
        "DRAFT_WORKER_URL": None,
    }
    env.update({name.upper(): None if value is None else str(value) for name, value in settings.items()})
    return env


def server(target: str, database_url: str, log: Path, **settings: object) -> FunctionServer:
    """A planbus function server for `target` (not started)."""
    return FunctionServer(target, MAIN, function_env(database_url, **settings), log)


def webhook_body(record: dict[str, Any]) -> dict[str, Any]:
    """The Supabase database-webhook payload of an INSERT on plan_requests."""
    return {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": record,
        "old_record": None,
    }


def worker_body(request_id: str) -> dict[str, Any]:
    """What the worker target is posted to process one request (a Cloud Tasks task's body)."""
    return {"request_id": request_id}


def outcome_of(answer: dict[str, Any]) -> str:
    """The outcome in the worker's answer: completed, failed or skipped."""
    return str(answer.get("outcome"))


# --- the request path: from the webhook to the worker ----------------------------------------------


@dataclass(frozen=True)
class RequestPath:
    """The running servers a webhook goes through: where the database posts it, and the server that runs
    the plans (the one a crash drill kills)."""

    webhook_url: str
    worker: FunctionServer


@contextmanager
def request_path(database_url: str, log_dir: Path, **settings: object) -> Iterator[RequestPath]:
    """Inline dispatch: one handle_plan_request server is the webhook and the worker."""
    webhook = server(WEBHOOK_TARGET, database_url, log_dir / "webhook.log", **settings)
    with running(webhook):
        yield RequestPath(webhook.url, webhook)


@contextmanager
def cloud_tasks_path(database_url: str, log_dir: Path, **settings: object) -> Iterator[RequestPath]:
    """Cloud Tasks dispatch on the local emulator: handle_plan_request (DISPATCH=cloud-tasks) enqueues
    {"request_id"}, the emulator posts it to a process_plan_request server, which does the work."""
    from planbus.devstack.console import Console
    from planbus.devstack.tasks_emulator import TasksEmulator

    with (log_dir / "tasks-emulator.log").open("w") as emulator_log:
        emulator = TasksEmulator(Console(emulator_log, min_severity="WARNING"))
        emulator.start()
        try:
            worker = server(WORKER_TARGET, database_url, log_dir / "worker.log", **settings)
            queue = {name.lower(): value for name, value in emulator.environment().items()}
            webhook = server(
                WEBHOOK_TARGET,
                database_url,
                log_dir / "webhook.log",
                **{**settings, **queue, "plan_worker_url": worker.url},
            )
            with running(worker, webhook):
                yield RequestPath(webhook.url, worker)
        finally:
            emulator.stop()


# The error history: one row per failed attempt, of every kind (ERRORS_OF_KIND narrows it to ours).
ERRORS_TABLE = "planbus_private.request_errors"
ERRORS_OF_KIND = f"kind = '{KIND}'"

# Every attempt that lost its lease (a killed worker, a worker cut off from the database) leaves an error
# history row whose message starts so.
LEASE_EXPIRED = "lease expired"


# --- pickup: the paths from an insert to the worker -------------------------------------------------


@contextmanager
def _relayed(database_url: str, webhook_url: str, log: Path) -> Iterator[None]:
    """The local stack's relay: pg_notify('planbus_events') → `webhook_url`, as pg_net posts it."""
    from planbus.devstack.console import Console
    from planbus.devstack.relay import WebhookRelay

    with log.open("w") as relay_log:
        relay = WebhookRelay(
            database_url,
            {REQUESTS_TABLE.removeprefix("public."): webhook_url},
            SECRET,
            console=Console(relay_log, min_severity="WARNING"),
            timeout=60,
        )
        relay.start()
        try:
            yield
        finally:
            relay.stop()


@contextmanager
def relay_path(database_url: str, log_dir: Path) -> Iterator[None]:
    """The local stack's inline path: trigger → pg_notify → WebhookRelay → handle_plan_request."""
    with (
        request_path(database_url, log_dir) as path,
        _relayed(database_url, path.webhook_url, log_dir / "relay.log"),
    ):
        yield


@contextmanager
def relay_cloud_tasks_path(database_url: str, log_dir: Path) -> Iterator[None]:
    """The deployed path, locally: trigger → pg_notify → WebhookRelay → handle_plan_request
    (DISPATCH=cloud-tasks) → the Cloud Tasks emulator → process_plan_request."""
    with (
        cloud_tasks_path(database_url, log_dir) as path,
        _relayed(database_url, path.webhook_url, log_dir / "relay-tasks.log"),
    ):
        yield


PICKUP_PATHS: dict[str, Callable[[str, Path], AbstractContextManager[None]]] = {
    "planbus, local relay (inline)": relay_path,
    "planbus, relay → Cloud Tasks emulator → worker": relay_cloud_tasks_path,
}
# The path the pickup target is set for; the others are measured beside it. The emulator's dispatch is
# its own (it polls its queue and posts one task at a time), not Cloud Tasks' in production.
PICKUP_TARGET_PATH = "planbus, local relay (inline)"


# --- the claim and the completion as SQL ------------------------------------------------------------


@dataclass(frozen=True)
class SampleResult:
    """A completed request's arguments as the worker sends them for the offline plan."""

    result: str  # the `result` column's JSON
    plan: str
    reminders: str


def sample_result() -> SampleResult:
    from planbus.llm.offline import OfflineGenerator
    from planbus.models import LeadFacts, PlanResult
    from planbus.planning import reminder_zone, schedule_reminders

    lead = LeadFacts(
        id=uuid.uuid4(),
        full_name="Bench Lead",
        company="Acme Freight",
        title="Head of Operations",
        notes="Met at a trade fair. Wants a pilot.",
    )
    now = datetime.now(UTC)
    generation = OfflineGenerator().generate(lead, today=now.date())
    result = PlanResult(
        plan=generation.plan,
        generator="offline",
        model=generation.model,
        usage=None,
        latency_ms=0,
        generated_at=now,
        attempt=1,
    )
    reminders = schedule_reminders(result.plan, lead, now=now, hour=10, zone=reminder_zone("UTC"))
    return SampleResult(
        json.dumps(result.model_dump(mode="json")),
        json.dumps(result.plan.model_dump(mode="json")),
        json.dumps([reminder.as_json() for reminder in reminders]),
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def claim_sql(request_id: str) -> str:
    return f"SELECT public.planbus_claim_request('{KIND}', '{request_id}'::uuid, 180, 3)"


def complete_sql(request_id: str, sample: SampleResult, attempt: int = 1) -> str:
    completion = f'{{"plan": {sample.plan}, "reminders": {sample.reminders}}}'
    return (
        f"SELECT public.planbus_complete_request('{KIND}', '{request_id}'::uuid, {attempt}, "
        f"{_literal(sample.result)}::jsonb, {_literal(completion)}::jsonb)"
    )


# --- the Mini App ------------------------------------------------------------------------------------


def as_mini_app(user_id: str, telegram_id: int) -> list[str]:
    """What PostgREST runs before a signed-in user's statement: the role and the JWT claims."""
    claims = {"sub": user_id, "role": "authenticated", "aud": "authenticated", "telegram_id": telegram_id}
    return [
        "SET LOCAL ROLE authenticated",
        f"SELECT set_config('request.jwt.claims', {_literal(json.dumps(claims))}, true)",
    ]


# The triggers a Mini App insert runs (the insert benchmark switches them off one by one to apportion the
# time): each name and what it does.
INSERT_TRIGGERS = {
    "plan_requests_webhook": "the webhook trigger",
    "plan_requests_daily_limit": "the daily-limit trigger",
}


def mini_app_insert(table: str, lead_id: str, telegram_id: int) -> str:
    return f"INSERT INTO {table} (lead_id, telegram_id) VALUES ('{lead_id}', {telegram_id})"


def mini_app_poll(request_id: str) -> str:
    return (
        "SELECT id, lead_id, status, result, error, attempts, created_at, updated_at "
        f"FROM public.plan_requests WHERE id = '{request_id}'"
    )


# --- scale: the hot statements ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleFixture:
    """Rows data.active_rows made: a lead free for a new request, and the Mini App user polling one."""

    free_lead_id: str
    free_telegram_id: int
    poll_user_id: str
    poll_telegram_id: int
    poll_request_id: str


def scale_operations(fixture: ScaleFixture) -> dict[str, list[str]]:
    """Each operation the scale benchmark times: the statements one call runs."""
    new_id = str(uuid.uuid4())
    return {
        "insert + claim": [
            f"INSERT INTO public.plan_requests (id, lead_id, telegram_id) "
            f"VALUES ('{new_id}', '{fixture.free_lead_id}', {fixture.free_telegram_id})",
            claim_sql(new_id),
        ],
        "lost-webhook scan": [f"SELECT public.planbus_find_lost_requests('{KIND}', 60, 20)"],
        "stale reset": [f"SELECT public.planbus_reset_stale_requests('{KIND}', 3)"],
        "due-reminder claim": ["SELECT public.planbus_claim_due_reminders(30, 105, 5)"],
        "status report": ["SELECT public.planbus_status()"],
        "Mini App poll by id": [
            *as_mini_app(fixture.poll_user_id, fixture.poll_telegram_id),
            mini_app_poll(fixture.poll_request_id),
        ],
    }


# --- cold start: one meaningful first request per target ---------------------------------------------


@dataclass(frozen=True)
class FirstRequest:
    body: dict[str, Any]
    env: dict[str, str]
    expect: int = 200


def first_request(target: str, database_url: str) -> FirstRequest | None:
    """The first call a fresh instance of `target` answers, doing the target's real work: the rows it
    needs are made in `database_url` now (tests/support/first_requests.py defines them, for the import
    tests too). None for a target that module does not know."""
    from support.first_requests import FIRST_REQUESTS

    arrange = FIRST_REQUESTS.get(target)
    if arrange is None:
        return None
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        first = arrange(conn)
    return FirstRequest(first.body or {}, first.env)


# --- reminders ---------------------------------------------------------------------------------------


def reminder_env(telegram_base: str, budget_seconds: float) -> dict[str, object]:
    """Settings of a send_due_reminders server delivering to `telegram_base` for `budget_seconds`."""
    return {
        "telegram_bot_token": BOT_TOKEN,
        "telegram_api_base": telegram_base,
        "function_budget_seconds": budget_seconds,
    }


# --- llm faults: a request against an API that keeps failing -----------------------------------------


def fail_for_good(
    database_url: str, request_ids: list[str], http_client: Any, *, max_attempts: int, sleep: Any
) -> int:
    """Run each request through the worker's use case with the OpenAI plan generator on `http_client`,
    round after round, every backoff skipped, until none is pending; returns the rounds it took. The
    generator's in-call pauses go to `sleep`."""
    from pydantic import SecretStr

    from planbus.clock import SystemClock
    from planbus.db.postgres import PostgresDatabase
    from planbus.kinds import PLAN
    from planbus.llm.openai_generator import OpenAIGenerator
    from planbus.logs import LOGGER_NAME
    from planbus.services.requests import process_request
    from planbus.settings import Settings

    settings = Settings(openai_api_key=SecretStr("sk-bench"), max_attempts=max_attempts)
    generator = OpenAIGenerator(
        api_key="sk-bench",
        model="gpt-5-mini",
        base_url="https://llm.bench.test/v1",
        timeout=settings.openai_timeout,
        http_client=http_client,
        sleep=sleep,
    )
    db = PostgresDatabase(database_url)
    # Every failed attempt logs a warning, as a worker's should; here only the counts are wanted.
    log = logging.getLogger(LOGGER_NAME)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        for rounds in range(1, max_attempts + 2):
            for request_id in request_ids:
                process_request(PLAN, db, generator, SystemClock(), request_id, settings=settings)
            with psycopg.connect(database_url, autocommit=True) as conn:
                pending = conn.execute(
                    f"UPDATE {REQUESTS_TABLE} SET run_after = now() WHERE status = 'pending' RETURNING id"
                ).fetchall()
            if not pending:
                return rounds
        return rounds
    finally:
        log.setLevel(level)
        db.close()
