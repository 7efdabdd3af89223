"""deploy.sh end to end: a fake gcloud on PATH (tests/fakes/gcloud) records every call and keeps what the
calls created; the database steps run for real (`planbus migrate`, `planbus configure`) against a
database of this run's PostgreSQL server."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from planbus.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
PROJECT = "planbus-test"
RUNTIME_SA = f"planbus-runtime@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"planbus-scheduler@{PROJECT}.iam.gserviceaccount.com"
TARGETS = ["handle_plan_request", "send_due_reminders", "reset_stale_requests", "telegram_auth"]
JOBS = {
    "planbus-send-due-reminders": "send_due_reminders",
    "planbus-reset-stale-requests": "reset_stale_requests",
}


def url_of(target: str) -> str:
    return f"https://{target.replace('_', '-')}-fake123-ew.a.run.app"


def secret_values() -> dict[str, str]:
    return {
        "WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "OPENAI_API_KEY": "sk-test-" + secrets.token_urlsafe(24),
        "TELEGRAM_BOT_TOKEN": "123456:" + secrets.token_urlsafe(24),
        "SUPABASE_JWT_SECRET": secrets.token_urlsafe(40),
    }


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


@dataclass
class Run:
    """One deploy.sh run: its output, the gcloud calls it made, and the fake cloud's state after it."""

    result: subprocess.CompletedProcess[str]
    calls: list[list[str]]
    state: dict[str, Any]

    def commands(self, *words: str) -> list[list[str]]:
        return [call for call in self.calls if call[: len(words)] == list(words)]

    def text(self) -> str:
        return self.result.stdout + self.result.stderr + json.dumps(self.calls)


def deploy(env_file: Path, state_dir: Path, *args: str, environ: dict[str, str] | None = None) -> Run:
    """Run ./deploy.sh with the fake gcloud first on PATH; no planbus setting from this process leaks in."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in settings and k != "GCLOUD"}
    env.update(PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}", FAKE_GCLOUD_STATE=str(state_dir))
    env.update(environ or {})
    log = state_dir / "calls.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    result = subprocess.run(
        [str(ROOT / "deploy.sh"), "--env", str(env_file), *args],
        env=env,
        cwd=state_dir.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()[before:]] if log.exists() else []
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    return Run(result, calls, state)


def succeeded(run: Run) -> Run:
    if run.result.returncode != 0:
        pytest.fail(
            f"deploy.sh failed:\n{run.result.stdout[-3000:]}\n--- stderr ---\n{run.result.stderr[-3000:]}"
        )
    return run


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


def stored_settings(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT name, value FROM planbus_private.settings").fetchall())


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


def valid_values(database_url: str = "postgresql://planbus@127.0.0.1:1/unreachable") -> dict[str, str]:
    return {
        "GCP_PROJECT": PROJECT,
        "GCP_REGION": "europe-west1",
        "DATABASE_URL": database_url,
        **secret_values(),
    }


def test_a_dry_run_prints_every_command_and_runs_none(
    tmp_path: Path, fresh_database: Callable[..., str]
) -> None:
    database_url = fresh_database()
    values = valid_values(database_url)
    run = deploy(write_env(tmp_path / "env", values), tmp_path / "cloud", "--dry-run")
    assert run.result.returncode == 0, run.result.stderr
    assert run.calls == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('planbus_private.schema_migrations')").fetchone() == (None,)
    out = run.result.stdout
    for expected in (
        "+ planbus migrate",
        "+ gcloud services enable",
        "+ gcloud secrets create planbus-webhook-secret",
        "+ gcloud secrets versions add planbus-webhook-secret",
        "+ planbus configure webhook '--url=<url of handle-plan-request>'",
        "+ gcloud scheduler jobs create http planbus-send-due-reminders",
        "+ gcloud scheduler jobs update http planbus-reset-stale-requests",
    ):
        assert expected in out, expected
    for target in TARGETS:
        assert f"+ gcloud functions deploy {target.replace('_', '-')} --gen2" in out
    for value in values.values():
        if value not in (PROJECT, "europe-west1"):
            assert value not in run.text()


def test_only_deploys_one_function_with_its_secrets_and_schedule(tmp_path: Path, database_url: str) -> None:
    run = deploy(
        write_env(tmp_path / "env", valid_values(database_url)),
        tmp_path / "cloud",
        "--only",
        "send-due-reminders",
    )
    succeeded(run)
    assert [call[2] for call in run.commands("functions", "deploy")] == ["send-due-reminders"]
    assert {call[2] for call in run.commands("secrets", "create")} == {
        "planbus-database-url",
        "planbus-webhook-secret",
        "planbus-telegram-bot-token",
    }
    assert list(run.state["jobs"]) == ["planbus-send-due-reminders"]
    assert "webhook_url" not in stored_settings(database_url)


def test_supabase_cron_schedules_through_the_database_and_removes_cloud_scheduler_jobs(
    tmp_path: Path, database_url: str
) -> None:
    """pg_cron and pg_net are stood in for by tests/fakes/pg_cron_and_pg_net.sql."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((FAKES / "pg_cron_and_pg_net.sql").read_text().encode())
    state = tmp_path / "cloud"
    state.mkdir()
    leftover: dict[str, Any] = {"jobs": {"planbus-send-due-reminders": {"headers": {}}}}
    (state / "state.json").write_text(json.dumps({**json.loads(json.dumps(EMPTY_STATE)), **leftover}))
    values = {**valid_values(database_url), "SCHEDULER": "supabase-cron"}
    run = succeeded(deploy(write_env(tmp_path / "env", values), state))

    assert [call[3] for call in run.commands("scheduler", "jobs", "delete")] == ["planbus-send-due-reminders"]
    assert run.state["jobs"] == {}
    assert not run.commands("scheduler", "jobs", "create")
    assert "cloudscheduler.googleapis.com" not in run.state["apis"]
    assert SCHEDULER_SA not in run.state["service_accounts"]
    deployed = {call[2]: call for call in run.commands("functions", "deploy")}
    assert "--allow-unauthenticated" in deployed["send-due-reminders"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        jobs: dict[str, str] = dict(conn.execute("SELECT jobname, command FROM cron.job").fetchall())
        assert set(jobs) == set(JOBS)
        assert values["WEBHOOK_SECRET"] not in json.dumps(jobs)
        conn.execute(jobs["planbus-send-due-reminders"])
        url, headers = conn.execute("SELECT url, headers FROM net.requests").fetchone()  # type: ignore[misc]
    assert url == url_of("send_due_reminders")
    assert headers["X-Webhook-Secret"] == values["WEBHOOK_SECRET"]


EMPTY_STATE: dict[str, Any] = {
    "apis": [],
    "service_accounts": [],
    "secrets": {},
    "secret_bindings": [],
    "functions": {},
    "invokers": [],
    "jobs": {},
}


@pytest.mark.parametrize(
    ("change", "args", "environ", "message"),
    [
        ({"GCP_PROJECT": None}, (), {}, "GCP_PROJECT is not set"),
        ({"GCP_REGION": None}, (), {}, "GCP_REGION is not set"),
        ({"DATABASE_URL": None}, (), {}, "DATABASE_URL is not set"),
        ({"WEBHOOK_SECRET": "short"}, (), {}, "WEBHOOK_SECRET must be at least 32 characters"),
        ({"OPENAI_TIMOUT": "30"}, (), {}, "unknown variable OPENAI_TIMOUT (did you mean OPENAI_TIMEOUT?)"),
        ({"OPENAI_TIMEOUT": "130"}, (), {}, "[handle_plan_request]: timeout 150 s is shorter than"),
        ({"LEASE_SECONDS": "100"}, (), {}, "timeout 150 s is longer than LEASE_SECONDS 100"),
        ({"SCHEDULER": "cron"}, (), {}, "SCHEDULER must be one of"),
        ({}, ("--only", "nope"), {}, "--only: no function nope"),
        ({}, ("--frobnicate",), {}, "unknown argument --frobnicate"),
        ({}, (), {"GCLOUD": "/nonexistent/gcloud"}, "gcloud is not installed"),
        ({}, (), {"FAKE_GCLOUD_NO_ACCOUNT": "1"}, "gcloud has no active account: run gcloud auth login"),
    ],
)
def test_a_missing_or_wrong_prerequisite_stops_before_any_change(
    tmp_path: Path,
    change: dict[str, str | None],
    args: tuple[str, ...],
    environ: dict[str, str],
    message: str,
) -> None:
    values = {**valid_values(), **change}
    env_file = write_env(tmp_path / "env", {k: v for k, v in values.items() if v is not None})
    run = deploy(env_file, tmp_path / "cloud", *args, environ=environ)
    assert run.result.returncode != 0
    assert message in run.result.stderr + run.result.stdout
    assert all(call[:2] == ["auth", "list"] for call in run.calls), run.calls
    assert not any(run.state.values())


def test_a_missing_or_malformed_env_file_is_refused(tmp_path: Path) -> None:
    missing = deploy(tmp_path / "nowhere.env", tmp_path / "cloud")
    assert missing.result.returncode != 0
    assert "no env file at" in missing.result.stderr
    bad = tmp_path / "bad.env"
    bad.write_text("GCP_PROJECT=planbus-test\nthis is not a setting\n")
    malformed = deploy(bad, tmp_path / "cloud")
    assert malformed.result.returncode != 0
    assert "bad.env:2: expected NAME=value" in malformed.result.stderr
    assert malformed.calls == []


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)"
)
def test_deploy_sh_is_clean_under_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(ROOT / "deploy.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_a_failing_cloud_command_stops_the_deploy_and_names_the_step(
    tmp_path: Path, database_url: str
) -> None:
    env_file = write_env(tmp_path / "env", valid_values(database_url))
    run = deploy(env_file, tmp_path / "cloud", environ={"FAKE_GCLOUD_FAIL": "functions deploy"})
    assert run.result.returncode != 0
    assert "PERMISSION_DENIED: simulated failure" in run.result.stdout
    assert 'stopped at "Function handle-plan-request (target handle_plan_request)"' in run.result.stderr
    assert len(run.commands("functions", "deploy")) == 1
    assert not run.commands("functions", "describe")
    assert not run.commands("scheduler")
