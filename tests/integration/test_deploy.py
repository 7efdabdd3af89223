"""deploy.sh end to end, three times over one database and one fake cloud: a first deploy, the same deploy
again, and a deploy with a new WEBHOOK_SECRET. The default dispatch is Cloud Tasks: a queue, private
workers only the tasks identity may call, and the webhook and sweeper functions deployed with the
workers' URLs."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from planbus.deploy.kinds import KINDS
from support.deploy_runs import (
    JOBS,
    PROJECT,
    QUEUE,
    QUEUE_PATH,
    RUNTIME_SA,
    SCHEDULED,
    SCHEDULER_SA,
    TARGETS,
    TASKS_SA,
    WEBHOOKS,
    WORKERS,
    Run,
    deploy,
    name_of,
    secret_values,
    stored_settings,
    succeeded,
    url_of,
    worker_urls,
    write_env,
)


@dataclass
class History:
    values: dict[str, str]
    rotated_secret: str
    database_url: str
    first: Run
    second: Run
    rotated: Run


@pytest.fixture(scope="module")
def history(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """Deploy to an empty database, deploy again unchanged, then again with a new WEBHOOK_SECRET."""
    name = f"planbus_deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    root = tmp_path_factory.mktemp("deploy")
    values = {
        "GCP_PROJECT": PROJECT,
        "GCP_REGION": "europe-west1",
        "DATABASE_URL": database_url,
        "OPENAI_MODEL": "gpt-5-mini",
        "LOG_LEVEL": "DEBUG",
        **secret_values(),
    }
    env_file = write_env(root / ".env.deploy", values)
    state = root / "cloud"
    first = succeeded(deploy(env_file, state))
    second = succeeded(deploy(env_file, state))
    rotated_secret = secrets.token_urlsafe(32)
    write_env(env_file, {**values, "WEBHOOK_SECRET": rotated_secret})
    rotated = succeeded(deploy(env_file, state))
    try:
        yield History(values, rotated_secret, database_url, first, second, rotated)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_first_deploy_creates_every_secret_from_stdin(history: History) -> None:
    created = {call[2] for call in history.first.commands("secrets", "create")}
    assert created == {
        "planbus-database-url",
        "planbus-webhook-secret",
        "planbus-openai-api-key",
        "planbus-telegram-bot-token",
        "planbus-supabase-jwt-secret",
    }
    assert not history.first.commands("secrets", "versions", "add")
    assert history.first.state["secrets"]["planbus-openai-api-key"] == [history.values["OPENAI_API_KEY"]]
    assert history.first.state["secrets"]["planbus-database-url"] == [history.values["DATABASE_URL"]]
    readers = {(secret, member) for secret, member, _ in history.first.state["secret_bindings"]}
    assert readers == {(secret, f"serviceAccount:{RUNTIME_SA}") for secret in created}
    assert sorted(history.first.state["service_accounts"]) == [RUNTIME_SA, SCHEDULER_SA, TASKS_SA]


def test_first_deploy_deploys_every_function_with_the_flags_of_infra(history: History) -> None:
    deployed = {call[2]: call for call in history.first.commands("functions", "deploy")}
    assert sorted(deployed) == sorted(name_of(t) for t in TARGETS)
    handle = deployed["handle-plan-request"]
    for flag in (
        "--gen2",
        "--runtime=python312",
        "--source=functions",
        "--entry-point=handle_plan_request",
        "--trigger-http",
        "--serve-all-traffic-latest-revision",
        "--allow-unauthenticated",
        "--memory=512Mi",
        "--cpu=1",
        "--timeout=150s",
        "--concurrency=4",
        "--min-instances=0",
        "--max-instances=5",
        f"--run-service-account={RUNTIME_SA}",
        "--region=europe-west1",
        f"--project={PROJECT}",
    ):
        assert flag in handle, flag
    functions = history.first.state["functions"]
    assert functions["handle-plan-request"]["secrets"] == {
        "DATABASE_URL": "planbus-database-url:latest",
        "WEBHOOK_SECRET": "planbus-webhook-secret:latest",
        "OPENAI_API_KEY": "planbus-openai-api-key:latest",
    }
    assert functions["telegram-auth"]["secrets"] == {
        "DATABASE_URL": "planbus-database-url:latest",
        "TELEGRAM_BOT_TOKEN": "planbus-telegram-bot-token:latest",
        "SUPABASE_JWT_SECRET": "planbus-supabase-jwt-secret:latest",
    }
    assert functions["telegram-auth"]["environment"] == {
        "LOG_LEVEL": "DEBUG",
        "OPENAI_MODEL": "gpt-5-mini",
        "THREADS": "8",
    }
    assert "--no-allow-unauthenticated" in deployed["send-due-reminders"]
    assert "--no-allow-unauthenticated" in deployed["reset-stale-requests"]
    assert "--allow-unauthenticated" in deployed["telegram-auth"]
    invokers = sorted(map(tuple, history.first.state["invokers"]))
    assert invokers == sorted(
        [(name_of(t), f"serviceAccount:{SCHEDULER_SA}") for t in SCHEDULED]
        + [(name_of(t), f"serviceAccount:{TASKS_SA}") for t in WORKERS]
        + [(name_of(t), "allUsers") for t in [*WEBHOOKS, "telegram_auth"]]
    )


def test_the_workers_are_private_and_only_the_tasks_identity_may_call_them(history: History) -> None:
    for target in WORKERS:
        for call in history.first.commands("functions", "deploy", name_of(target)):
            assert "--no-allow-unauthenticated" in call and "--allow-unauthenticated" not in call
        callers = [member for name, member in history.rotated.state["invokers"] if name == name_of(target)]
        assert callers == [f"serviceAccount:{TASKS_SA}"]


def test_the_dispatching_functions_get_the_queue_and_the_workers_urls(history: History) -> None:
    dispatch = {
        "DISPATCH": "cloud-tasks",
        "CLOUD_TASKS_QUEUE": QUEUE_PATH,
        "CLOUD_TASKS_SERVICE_ACCOUNT": TASKS_SA,
        **worker_urls(),
    }
    functions = history.first.state["functions"]
    for target in [*WEBHOOKS, "reset_stale_requests", *WORKERS]:
        environment = functions[name_of(target)]["environment"]
        assert {name: environment.get(name) for name in dispatch} == dispatch, target
        assert environment["LOG_LEVEL"] == "DEBUG"
    for target in ["send_due_reminders", "telegram_auth"]:
        assert not set(dispatch) & set(functions[name_of(target)]["environment"]), target


def test_the_workers_are_deployed_before_the_functions_that_need_their_urls(history: History) -> None:
    first = history.first.deployed()
    last_worker = max(i for i, name in enumerate(first) if name in map(name_of, WORKERS))
    assert all(first.index(name_of(target)) > last_worker for target in [*WEBHOOKS, *SCHEDULED])
    # A first deploy sends each worker out twice: its own URL exists only once it is deployed.
    assert first[: 2 * len(WORKERS)] == [name_of(t) for t in WORKERS] * 2
    assert history.second.deployed() == [name_of(t) for t in WORKERS] + [
        name_of(t) for t in TARGETS if t not in WORKERS
    ]


def test_the_queue_is_created_once_then_updated_with_the_limits_of_infra(history: History) -> None:
    created = history.first.commands("tasks", "queues", "create")
    assert [call[3] for call in created] == [QUEUE]
    assert not history.first.commands("tasks", "queues", "update")
    for later in (history.second, history.rotated):
        assert not later.commands("tasks", "queues", "create")
        assert [call[3] for call in later.commands("tasks", "queues", "update")] == [QUEUE]
    assert history.rotated.state["queues"] == {
        QUEUE: {
            "location": "europe-west1",
            "max-concurrent-dispatches": "10",
            "max-dispatches-per-second": "5",
            "max-attempts": "5",
            "min-backoff": "10s",
            "max-backoff": "300s",
            "max-doublings": "4",
        }
    }
    assert "cloudtasks.googleapis.com" in history.first.state["apis"]
    queue_created = history.first.calls.index(created[0])
    first_worker = history.first.calls.index(history.first.commands("functions", "deploy")[0])
    assert queue_created < first_worker


def test_the_functions_identity_may_enqueue_tasks_signed_by_the_tasks_identity(history: History) -> None:
    state = history.rotated.state
    assert state["queue_bindings"] == [[QUEUE, f"serviceAccount:{RUNTIME_SA}", "roles/cloudtasks.enqueuer"]]
    assert state["account_bindings"] == [
        [TASKS_SA, f"serviceAccount:{RUNTIME_SA}", "roles/iam.serviceAccountUser"]
    ]


def test_first_deploy_creates_two_scheduler_jobs_with_oidc_and_the_secret_header(history: History) -> None:
    assert {call[4] for call in history.first.commands("scheduler", "jobs", "create", "http")} == set(JOBS)
    jobs = history.first.state["jobs"]
    for job, target in JOBS.items():
        assert jobs[job]["uri"] == url_of(target)
        assert jobs[job]["schedule"] == "* * * * *"
        assert jobs[job]["time-zone"] == "Etc/UTC"
        assert jobs[job]["max-retry-attempts"] == "0"
        assert jobs[job]["oidc-service-account-email"] == SCHEDULER_SA
        assert jobs[job]["headers"]["X-Webhook-Secret"] == history.values["WEBHOOK_SECRET"]


def test_first_deploy_migrates_and_stores_the_webhook_in_the_database(history: History) -> None:
    with psycopg.connect(history.database_url) as conn:
        applied = conn.execute("SELECT count(*) FROM planbus_private.schema_migrations").fetchone()
    assert applied is not None and applied[0] >= 6
    assert "applied 0001_roles_and_auth.sql" in history.first.result.stdout
    assert "database is up to date" in history.second.result.stdout


def test_second_deploy_updates_instead_of_creating(history: History) -> None:
    second = history.second
    assert not second.commands("secrets", "create")
    assert not second.commands("secrets", "versions", "add")
    assert not second.commands("iam", "service-accounts", "create")
    assert not second.commands("scheduler", "jobs", "create")
    assert {call[4] for call in second.commands("scheduler", "jobs", "update", "http")} == set(JOBS)
    assert len(second.commands("functions", "deploy")) == len(TARGETS)
    assert all(len(versions) == 1 for versions in second.state["secrets"].values())
    environments = [
        {name: function["environment"] for name, function in run.state["functions"].items()}
        for run in (history.first, second)
    ]
    assert environments[0] == environments[1]


def test_a_new_webhook_secret_is_rotated_everywhere(history: History) -> None:
    rotated = history.rotated
    assert [call[3] for call in rotated.commands("secrets", "versions", "add")] == ["planbus-webhook-secret"]
    assert rotated.state["secrets"]["planbus-webhook-secret"][-1] == history.rotated_secret
    for job in JOBS:
        assert rotated.state["jobs"][job]["headers"]["X-Webhook-Secret"] == history.rotated_secret
    stored = stored_settings(history.database_url)
    assert stored["webhook_secret"] == history.rotated_secret


def test_each_kind_s_webhook_url_and_channel_are_stored_for_its_trigger(history: History) -> None:
    stored = stored_settings(history.database_url)
    for kind in KINDS:
        assert stored[kind.webhook_url_setting] == url_of(kind.webhook_target)
        assert stored[kind.channel_setting] == f"planbus-{kind.name}"
    # migration 0006's trigger on plan_requests reads the unsuffixed names
    assert stored["webhook_url"] == url_of("handle_plan_request")
    assert stored["realtime_channel"] == "planbus-plan"


def test_no_secret_value_appears_in_output_or_on_a_command_line(history: History) -> None:
    values = [history.values[name] for name in ("WEBHOOK_SECRET", "OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN")]
    values += [history.values["SUPABASE_JWT_SECRET"], history.values["DATABASE_URL"], history.rotated_secret]
    for run in (history.first, history.second, history.rotated):
        text = run.text()
        for value in values:
            assert value not in text
    assert "***" in history.first.result.stdout


def test_the_summary_lists_every_function_url(history: History) -> None:
    summary = history.first.result.stdout.split("==> Summary", 1)[1]
    for target in TARGETS:
        assert url_of(target) in summary
