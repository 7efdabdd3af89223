"""How the local stack dispatches: which functions it serves in each mode, the settings each server gets,
and the settings it refuses before starting anything."""

from __future__ import annotations

import pytest

from planbus.devstack.tasks_emulator import (
    LOCAL_QUEUE,
    LocalDispatch,
    TasksEmulator,
    Worker,
    emulator_command,
)
from planbus.errors import ConfigurationError
from planbus.settings import Settings
from support.devstack_helpers import memory_console

FUNCTIONS = ("handle_plan_request", "send_due_reminders", "reset_stale_requests", "telegram_auth")
WORKERS = (
    Worker("handle_plan_request", "process_plan_request", "PLAN_WORKER_URL"),
    Worker("handle_draft_request", "process_draft_request", "DRAFT_WORKER_URL"),
)
SHELL = {
    "PATH": "/usr/bin",
    "DISPATCH": "cloud-tasks",
    "CLOUD_TASKS_QUEUE": "projects/real-project/locations/europe-west1/queues/planbus",
    "CLOUD_TASKS_EMULATOR_HOST": "10.0.0.9:9022",
    "CLOUD_TASKS_SERVICE_ACCOUNT": "tasks@real-project.iam.gserviceaccount.com",
    "PLAN_WORKER_URL": "https://real.example/process_plan_request",
}


def dispatch(mode: str, functions: tuple[str, ...] = FUNCTIONS) -> LocalDispatch:
    console, _ = memory_console()
    return LocalDispatch(mode, console, functions=functions, workers=WORKERS)  # type: ignore[arg-type]


def with_emulator(local: LocalDispatch) -> TasksEmulator:
    """An emulator that is not started: enough to compute the environment it implies."""
    console, _ = memory_console()
    local.emulator = TasksEmulator(console)
    return local.emulator


def test_with_cloud_tasks_every_kinds_worker_is_served_too() -> None:
    # The sweeper enqueues for every kind, even one whose webhook this stack does not serve.
    assert dispatch("cloud-tasks").targets == (*FUNCTIONS, "process_plan_request", "process_draft_request")


def test_a_worker_already_listed_is_served_once() -> None:
    listed = (*FUNCTIONS, "process_plan_request")
    assert dispatch("cloud-tasks", listed).targets == (*listed, "process_draft_request")


def test_inline_serves_no_worker() -> None:
    assert dispatch("inline", (*FUNCTIONS, "process_plan_request")).targets == FUNCTIONS


def test_a_stack_without_functions_needs_no_emulator() -> None:
    local = dispatch("cloud-tasks", ())
    local.start(Settings(lease_seconds=3, openai_timeout=1, draft_openai_timeout=1))
    assert (local.targets, local.emulator) == ((), None)


def test_inline_servers_are_told_inline_whatever_the_shell_says() -> None:
    env = dispatch("inline").environment(SHELL, {})
    assert env["DISPATCH"] == "inline"
    for name in (
        "CLOUD_TASKS_QUEUE",
        "CLOUD_TASKS_EMULATOR_HOST",
        "CLOUD_TASKS_SERVICE_ACCOUNT",
        "PLAN_WORKER_URL",
    ):
        assert name not in env
    assert env["PATH"] == "/usr/bin"


def test_cloud_tasks_servers_use_the_local_emulator_and_workers_never_a_real_queue() -> None:
    local = dispatch("cloud-tasks")
    emulator = with_emulator(local)
    urls = {
        "handle_plan_request": "http://127.0.0.1:4001",
        "process_plan_request": "http://127.0.0.1:4002",
        "process_draft_request": "http://127.0.0.1:4003",
    }
    env = local.environment(SHELL, urls)
    assert env["DISPATCH"] == "cloud-tasks"
    assert env["CLOUD_TASKS_QUEUE"] == LOCAL_QUEUE
    assert env["CLOUD_TASKS_EMULATOR_HOST"] == emulator.host
    assert (env["PLAN_WORKER_URL"], env["DRAFT_WORKER_URL"]) == (
        "http://127.0.0.1:4002",
        "http://127.0.0.1:4003",
    )
    assert "CLOUD_TASKS_SERVICE_ACCOUNT" not in env
    # The servers' settings are valid and point at the emulator.
    settings = Settings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    )
    assert (settings.dispatch_mode, settings.worker_url("plan")) == ("cloud-tasks", "http://127.0.0.1:4002")


def test_a_lease_too_short_for_cloud_tasks_is_refused_before_anything_starts() -> None:
    local = dispatch("cloud-tasks")
    short = Settings(lease_seconds=20, openai_timeout=5, draft_openai_timeout=5)
    with pytest.raises(ConfigurationError) as caught:
        local.start(short)
    assert "LEASE_SECONDS (20) must be larger than the plan dispatch deadline (35 s" in str(caught.value)
    assert "--dispatch inline" in str(caught.value)
    assert local.emulator is None


def test_inline_starts_nothing_and_accepts_a_short_lease() -> None:
    local = dispatch("inline")
    local.start(Settings(lease_seconds=3, openai_timeout=1, draft_openai_timeout=1))
    assert local.emulator is None
    assert local.state() == {"mode": "inline"}


def test_the_emulator_runs_bounded_retries_on_the_local_queue() -> None:
    command = emulator_command(9555)
    assert command[-5:] == [
        "start",
        "--port=9555",
        f"--default-queue={LOCAL_QUEUE}",
        "--max-retries=5",
        "--quiet",
    ]


def test_the_description_names_the_emulator_and_the_workers() -> None:
    local = dispatch("cloud-tasks")
    emulator = with_emulator(local)
    text = "\n".join(local.describe())
    assert emulator.host in text and LOCAL_QUEUE in text and "process_plan_request" in text
    assert local.state()["emulator"]["host"] == emulator.host
