"""deploy.sh end to end, three times over one database and one fake cloud: a first deploy, the same deploy
again, and a deploy with a new WEBHOOK_SECRET."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from support.deploy_runs import (
    JOBS,
    PROJECT,
    RUNTIME_SA,
    SCHEDULER_SA,
    TARGETS,
    Run,
    deploy,
    secret_values,
    stored_settings,
    succeeded,
    url_of,
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
    assert sorted(history.first.state["service_accounts"]) == [RUNTIME_SA, SCHEDULER_SA]


def test_first_deploy_deploys_four_functions_with_the_flags_of_infra(history: History) -> None:
    deployed = {call[2]: call for call in history.first.commands("functions", "deploy")}
    assert sorted(deployed) == sorted(t.replace("_", "-") for t in TARGETS)
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
    assert functions["handle-plan-request"]["environment"] == {
        "LOG_LEVEL": "DEBUG",
        "OPENAI_MODEL": "gpt-5-mini",
        "THREADS": "4",
    }
    assert "--no-allow-unauthenticated" in deployed["send-due-reminders"]
    assert "--no-allow-unauthenticated" in deployed["reset-stale-requests"]
    assert "--allow-unauthenticated" in deployed["telegram-auth"]
    invokers = sorted(history.first.state["invokers"])
    assert invokers == [
        [name, f"serviceAccount:{SCHEDULER_SA}"] for name in ("reset-stale-requests", "send-due-reminders")
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
    assert len(second.commands("functions", "deploy")) == 4
    assert all(len(versions) == 1 for versions in second.state["secrets"].values())


def test_a_new_webhook_secret_is_rotated_everywhere(history: History) -> None:
    rotated = history.rotated
    assert [call[3] for call in rotated.commands("secrets", "versions", "add")] == ["planbus-webhook-secret"]
    assert rotated.state["secrets"]["planbus-webhook-secret"][-1] == history.rotated_secret
    for job in JOBS:
        assert rotated.state["jobs"][job]["headers"]["X-Webhook-Secret"] == history.rotated_secret
    stored = stored_settings(history.database_url)
    assert stored["webhook_secret"] == history.rotated_secret
    assert stored["webhook_url"] == url_of("handle_plan_request")


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
