"""Running ./deploy.sh under test: a fake gcloud (tests/fakes/gcloud) first on PATH records every call and
keeps what the calls created; the database steps run for real against this run's PostgreSQL server.
What deploy sets up for each request kind is named after `planbus.deploy.kinds.KINDS`, as deploy does."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from planbus.deploy.kinds import KINDS
from planbus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "fakes"
PROJECT = "planbus-test"
RUNTIME_SA = f"planbus-runtime@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"planbus-scheduler@{PROJECT}.iam.gserviceaccount.com"
TASKS_SA = f"planbus-tasks@{PROJECT}.iam.gserviceaccount.com"
QUEUE = "planbus"
QUEUE_PATH = f"projects/{PROJECT}/locations/europe-west1/queues/{QUEUE}"
WEBHOOKS = [kind.webhook_target for kind in KINDS]
WORKERS = [kind.worker_target for kind in KINDS]
SCHEDULED = ["send_due_reminders", "reset_stale_requests"]
TARGETS = [*WEBHOOKS, *SCHEDULED, "telegram_auth", *WORKERS]
JOBS = {
    "planbus-send-due-reminders": "send_due_reminders",
    "planbus-reset-stale-requests": "reset_stale_requests",
}


def name_of(target: str) -> str:
    return target.replace("_", "-")


def url_of(target: str) -> str:
    return f"https://{name_of(target)}-fake123-ew.a.run.app"


def worker_urls() -> dict[str, str]:
    """The worker URL variables the dispatching functions get, once the workers are deployed."""
    return {kind.worker_url_variable: url_of(kind.worker_target) for kind in KINDS}


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

    def deployed(self) -> list[str]:
        """The functions deployed, in order, a name twice when it was deployed twice."""
        return [call[2] for call in self.commands("functions", "deploy")]

    def shown(self) -> list[str]:
        """The commands deploy.sh printed, as it printed them."""
        return [line[4:] for line in self.result.stdout.splitlines() if line.startswith("  + ")]

    def text(self) -> str:
        return self.result.stdout + self.result.stderr + json.dumps(self.calls)


def deploy(env_file: Path | None, state_dir: Path, *args: str, environ: dict[str, str] | None = None) -> Run:
    """Run ./deploy.sh with the fake gcloud first on PATH; no planbus setting from this process leaks in.
    With `env_file` None no --env is passed: deploy.sh then reads its default file or the environment."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in settings and k != "GCLOUD"}
    env.update(PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}", FAKE_GCLOUD_STATE=str(state_dir))
    env.update(environ or {})
    log = state_dir / "calls.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    result = subprocess.run(
        [str(ROOT / "deploy.sh"), *(["--env", str(env_file)] if env_file else []), *args],
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


def valid_values(database_url: str = "postgresql://planbus@127.0.0.1:1/unreachable") -> dict[str, str]:
    return {
        "GCP_PROJECT": PROJECT,
        "GCP_REGION": "europe-west1",
        "DATABASE_URL": database_url,
        **secret_values(),
    }


def stored_settings(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT name, value FROM planbus_private.settings").fetchall())


EMPTY_STATE: dict[str, Any] = {
    "apis": [],
    "service_accounts": [],
    "secrets": {},
    "secret_bindings": [],
    "functions": {},
    "invokers": [],
    "jobs": {},
    "queues": {},
    "queue_bindings": [],
    "account_bindings": [],
}
