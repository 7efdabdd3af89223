"""deploy.sh's options and refusals: --dry-run, --only, SCHEDULER=supabase-cron, DISPATCH=inline, and
every prerequisite it checks before changing anything."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from planbus.deploy.kinds import KINDS
from support.deploy_runs import (
    EMPTY_STATE,
    FAKES,
    JOBS,
    PROJECT,
    QUEUE,
    ROOT,
    RUNTIME_SA,
    SCHEDULER_SA,
    TARGETS,
    TASKS_SA,
    WORKERS,
    deploy,
    name_of,
    stored_settings,
    succeeded,
    url_of,
    valid_values,
    write_env,
)


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
        *(
            f"+ planbus configure webhook --kind={kind.name} '--url=<url of {name_of(kind.webhook_target)}>' "
            f"--channel=planbus-{kind.name}"
            for kind in KINDS
        ),
        "+ gcloud scheduler jobs create http planbus-send-due-reminders",
        "+ gcloud scheduler jobs update http planbus-reset-stale-requests",
    ):
        assert expected in out, expected
    for target in TARGETS:
        assert f"+ gcloud functions deploy {name_of(target)} --gen2" in out
    for value in values.values():
        if value not in (PROJECT, "europe-west1"):
            assert value not in run.text()


def test_a_dry_run_shows_the_queue_the_bindings_and_the_private_workers(tmp_path: Path) -> None:
    run = deploy(write_env(tmp_path / "env", valid_values()), tmp_path / "cloud", "--dry-run")
    assert run.result.returncode == 0, run.result.stderr
    shown = run.shown()
    where = "--location=europe-west1 --project=planbus-test"
    limits = (
        "--max-concurrent-dispatches=10 --max-dispatches-per-second=5 --max-attempts=5 --min-backoff=10s "
        "--max-backoff=300s --max-doublings=4 --format=none"
    )
    runtime, tasks = f"--member=serviceAccount:{RUNTIME_SA}", f"--member=serviceAccount:{TASKS_SA}"
    for expected in (
        f"gcloud tasks queues describe {QUEUE} {where} '--format=value(name)'",
        f"gcloud tasks queues update {QUEUE} {where} {limits}",
        f"gcloud tasks queues create {QUEUE} {where} {limits}",
        f"gcloud tasks queues add-iam-policy-binding {QUEUE} {where} {runtime} "
        "--role=roles/cloudtasks.enqueuer --format=none",
        f"gcloud iam service-accounts add-iam-policy-binding {TASKS_SA} --project=planbus-test {runtime} "
        "--role=roles/iam.serviceAccountUser --format=none",
        "gcloud iam service-accounts create planbus-tasks --project=planbus-test "
        "'--display-name=planbus tasks'",
    ):
        assert expected in shown, expected
    assert "cloudtasks.googleapis.com" in next(line for line in shown if "services enable" in line)
    for target in WORKERS:
        deploy_line = next(
            line for line in shown if line.startswith(f"gcloud functions deploy {name_of(target)} ")
        )
        assert "--no-allow-unauthenticated" in deploy_line
        assert (
            f"gcloud functions add-invoker-policy-binding {name_of(target)} --project=planbus-test "
            f"--region=europe-west1 {tasks} --format=none"
        ) in shown
    order = [line.split()[3] for line in shown if line.startswith("gcloud functions deploy ")]
    assert order[: len(WORKERS)] == [name_of(t) for t in WORKERS]
    for kind in KINDS:
        assert f'"{kind.worker_url_variable}": "<url of {name_of(kind.worker_target)}>"' in run.result.stdout


def test_dispatch_inline_deploys_no_queue_and_no_worker(tmp_path: Path, database_url: str) -> None:
    values = {**valid_values(database_url), "DISPATCH": "inline"}
    run = succeeded(deploy(write_env(tmp_path / "env", values), tmp_path / "cloud"))
    assert sorted(run.deployed()) == sorted(name_of(t) for t in TARGETS if t not in WORKERS)
    assert not run.commands("tasks")
    assert "cloudtasks.googleapis.com" not in run.state["apis"]
    assert TASKS_SA not in run.state["service_accounts"]
    handle = run.state["functions"]["handle-plan-request"]["environment"]
    assert handle == {"DISPATCH": "inline", "THREADS": "4"}
    assert "DISPATCH" not in run.state["functions"]["telegram-auth"]["environment"]
    assert "note: DISPATCH=inline" in run.result.stdout
    only = deploy(write_env(tmp_path / "env", values), tmp_path / "cloud", "--only", "process_plan_request")
    assert only.result.returncode != 0
    assert "--only: process_plan_request is deployed only with DISPATCH=cloud-tasks" in only.result.stderr


def test_only_a_webhook_before_its_worker_exists_is_refused_before_any_change(
    tmp_path: Path, database_url: str
) -> None:
    env_file = write_env(tmp_path / "env", valid_values(database_url))
    run = deploy(env_file, tmp_path / "cloud", "--only", "handle-plan-request")
    assert run.result.returncode != 0
    assert (
        "--only handle_plan_request: process_plan_request is not deployed yet, and handle_plan_request "
        "sends each plan to it: deploy it first"
    ) in run.result.stderr
    assert {" ".join(call[:2]) for call in run.calls} == {
        "auth list",
        "projects describe",
        "functions describe",
    }
    assert not any(run.state.values())
    assert "webhook_url_plan" not in stored_settings(database_url)


def test_only_a_worker_then_only_its_webhook(tmp_path: Path, database_url: str) -> None:
    env_file, state = write_env(tmp_path / "env", valid_values(database_url)), tmp_path / "cloud"
    worker = succeeded(deploy(env_file, state, "--only", "process_plan_request"))
    assert worker.deployed() == ["process-plan-request"] * 2  # again, once its URL exists
    assert worker.state["functions"]["process-plan-request"]["environment"]["PLAN_WORKER_URL"] == url_of(
        "process_plan_request"
    )
    assert [call[3] for call in worker.commands("tasks", "queues", "create")] == [QUEUE]
    webhook = succeeded(deploy(env_file, state, "--only", "handle_plan_request"))
    assert webhook.deployed() == ["handle-plan-request"]
    environment = webhook.state["functions"]["handle-plan-request"]["environment"]
    assert environment["PLAN_WORKER_URL"] == url_of("process_plan_request")
    assert "DRAFT_WORKER_URL" not in environment
    assert stored_settings(database_url)["webhook_url_plan"] == url_of("handle_plan_request")
    assert "webhook_url_draft" not in stored_settings(database_url)


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


def test_on_insforge_each_kind_s_channel_calls_its_webhook_function(
    tmp_path: Path, database_url: str
) -> None:
    """InsForge deploys the same way; its triggers publish to one realtime channel per kind."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((FAKES / "insforge_realtime.sql").read_text().encode())
    values = {**valid_values(database_url), "REALTIME_CHANNEL": "crm"}
    run = succeeded(deploy(write_env(tmp_path / "env", values), tmp_path / "cloud"))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT pattern, webhook_urls FROM realtime.channels").fetchall()
    channels: dict[str, list[str]] = dict(rows)
    secret = values["WEBHOOK_SECRET"]
    assert channels == {
        f"crm-{kind.name}": [f"{url_of(kind.webhook_target)}?token={secret}"] for kind in KINDS
    }
    assert "published to the realtime channel 'crm-plan'" in run.result.stdout
    assert secret not in run.text()
    assert [call[3] for call in run.commands("tasks", "queues", "create")] == [QUEUE]


@pytest.mark.parametrize(
    ("change", "args", "environ", "message"),
    [
        ({"GCP_PROJECT": None}, (), {}, "GCP_PROJECT is not set"),
        ({"GCP_REGION": None}, (), {}, "GCP_REGION is not set"),
        ({"DATABASE_URL": None}, (), {}, "DATABASE_URL is not set"),
        ({"WEBHOOK_SECRET": "short"}, (), {}, "WEBHOOK_SECRET must be at least 32 characters"),
        ({"OPENAI_TIMOUT": "30"}, (), {}, "unknown variable OPENAI_TIMOUT (did you mean OPENAI_TIMEOUT?)"),
        ({"OPENAI_TIMEOUT": "130"}, (), {}, "[handle_plan_request]: timeout 150 s is shorter than"),
        # Inline: with Cloud Tasks the settings refuse a lease below the dispatch deadlines before this rule.
        (
            {"LEASE_SECONDS": "100", "DISPATCH": "inline"},
            (),
            {},
            "timeout 150 s is longer than LEASE_SECONDS 100",
        ),
        (
            {"LEASE_SECONDS": "100"},
            (),
            {},
            "LEASE_SECONDS (100) must be larger than the draft dispatch deadline",
        ),
        ({"SCHEDULER": "cron"}, (), {}, "SCHEDULER must be one of"),
        ({"DISPATCH": "queue"}, (), {}, "DISPATCH must be one of cloud-tasks, inline, not 'queue'"),
        (
            {"CLOUD_TASKS_SERVICE_ACCOUNT": "tasks-runner@other-project.iam.gserviceaccount.com"},
            (),
            {},
            "CLOUD_TASKS_SERVICE_ACCOUNT must be an account of planbus-test",
        ),
        ({"PLAN_WORKER_URL": "https://example.com"}, (), {}, "PLAN_WORKER_URL is set by deploy.sh"),
        ({"CLOUD_TASKS_QUEUE": "projects/p/locations/l/queues/q"}, (), {}, "CLOUD_TASKS_QUEUE is set by"),
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


@pytest.mark.skipif((ROOT / ".env.deploy").exists(), reason="a real .env.deploy would be read")
def test_without_an_env_file_the_settings_come_from_the_environment(tmp_path: Path) -> None:
    values = valid_values()
    run = deploy(None, tmp_path / "cloud", "--dry-run", environ=values)
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert "dry run of the environment" in run.result.stdout
    assert run.calls == []
    assert run.result.stdout.count("+ gcloud functions deploy ") == len(TARGETS)
    for value in values.values():
        if value not in (PROJECT, "europe-west1"):
            assert value not in run.text()


@pytest.mark.skipif((ROOT / ".env.deploy").exists(), reason="a real .env.deploy would be read")
def test_without_an_env_file_or_any_setting_the_deploy_is_refused(tmp_path: Path) -> None:
    run = deploy(None, tmp_path / "cloud", "--dry-run")
    assert run.result.returncode != 0
    assert "no planbus variable in the environment" in run.result.stderr
    assert run.calls == []


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
    assert 'stopped at "Function process-plan-request (target process_plan_request)"' in run.result.stderr
    assert len(run.commands("functions", "deploy")) == 1
    assert run.calls[-1][:3] == ["functions", "deploy", "process-plan-request"]
    assert not run.commands("scheduler")


def test_the_example_configuration_dry_runs_cleanly(tmp_path: Path) -> None:
    run = deploy(ROOT / "infra" / "env.example", tmp_path / "cloud", "--dry-run")
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    assert run.calls == []
    assert run.result.stdout.count("+ gcloud functions deploy ") == len(TARGETS)
    assert "==> Summary (dry run: nothing was run)" in run.result.stdout
