"""The dispatch settings: which mode is in use, what a queue, a worker URL and an emulator host look like,
and the dispatch deadline that must fit inside a claim's lease."""

from __future__ import annotations

from typing import Any

import pytest

from planbus.dispatch import cloud_tasks_queue
from planbus.errors import ConfigurationError
from planbus.settings import Settings, get_settings

QUEUE = "projects/planbus-test/locations/europe-west1/queues/planbus"


def settings(**values: Any) -> Settings:
    return Settings(**values)


def problem_of(monkeypatch: pytest.MonkeyPatch, **environment: str) -> str:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    return str(caught.value)


def test_dispatch_is_inline_without_a_queue() -> None:
    assert settings().dispatch_mode == "inline"


def test_dispatch_is_cloud_tasks_once_a_queue_is_set() -> None:
    assert settings(cloud_tasks_queue=QUEUE).dispatch_mode == "cloud-tasks"


def test_an_explicit_dispatch_wins_over_the_queue() -> None:
    assert settings(cloud_tasks_queue=QUEUE, dispatch="inline").dispatch_mode == "inline"
    assert settings(dispatch="cloud-tasks").dispatch_mode == "cloud-tasks"


def test_dispatch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH", "cloud-tasks")
    monkeypatch.setenv("CLOUD_TASKS_QUEUE", QUEUE)
    monkeypatch.setenv("PLAN_WORKER_URL", "https://worker.example/process_plan_request")
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:9022")
    current = get_settings()
    assert (current.dispatch_mode, current.cloud_tasks_queue) == ("cloud-tasks", QUEUE)
    assert current.worker_url("plan") == "https://worker.example/process_plan_request"
    assert current.cloud_tasks_emulator_host == "127.0.0.1:9022"


def test_empty_dispatch_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPATCH", "CLOUD_TASKS_QUEUE", "PLAN_WORKER_URL", "CLOUD_TASKS_EMULATOR_HOST"):
        monkeypatch.setenv(name, "")
    current = get_settings()
    assert (current.dispatch_mode, current.cloud_tasks_queue, current.plan_worker_url) == (
        "inline",
        None,
        None,
    )


def test_an_unknown_dispatch_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "dispatch" in problem_of(monkeypatch, DISPATCH="cloud_tasks")


@pytest.mark.parametrize(
    "queue",
    [
        "planbus",
        "projects/p/locations/l/queues/",
        "projects/p/locations/l/queues/q/tasks/t",
        "https://cloudtasks.googleapis.com/v2/projects/p/locations/l/queues/q",
        "projects/p/locations/l/queues/with space",
    ],
)
def test_a_queue_must_be_a_full_queue_name(monkeypatch: pytest.MonkeyPatch, queue: str) -> None:
    assert "projects/PROJECT/locations/LOCATION/queues/QUEUE" in problem_of(
        monkeypatch, CLOUD_TASKS_QUEUE=queue
    )


def test_a_domain_scoped_project_is_a_valid_queue_project() -> None:
    queue = "projects/example.com:planbus/locations/us-central1/queues/plans-1"
    assert settings(cloud_tasks_queue=queue).cloud_tasks_queue == queue


@pytest.mark.parametrize("url", ["worker.example/process", "ftp://worker.example/x", "https://"])
def test_a_worker_url_must_be_http(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert "DRAFT_WORKER_URL" in problem_of(monkeypatch, DRAFT_WORKER_URL=url)
    get_settings.cache_clear()
    monkeypatch.delenv("DRAFT_WORKER_URL")
    assert "PLAN_WORKER_URL" in problem_of(monkeypatch, PLAN_WORKER_URL=url)


@pytest.mark.parametrize("host", ["localhost", "http://127.0.0.1:9022", "127.0.0.1:0", "127.0.0.1:70000"])
def test_an_emulator_host_is_host_and_port(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    assert "is not host:port" in problem_of(monkeypatch, CLOUD_TASKS_EMULATOR_HOST=host)


@pytest.mark.parametrize("host", ["127.0.0.1:9022", "localhost:8123", "[::1]:9022"])
def test_emulator_hosts_that_are_host_and_port(host: str) -> None:
    assert settings(cloud_tasks_emulator_host=host).cloud_tasks_emulator_host == host


def test_a_service_account_is_an_email(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "CLOUD_TASKS_SERVICE_ACCOUNT" in problem_of(
        monkeypatch, CLOUD_TASKS_SERVICE_ACCOUNT="planbus-tasks"
    )


def test_each_kind_has_its_worker_url() -> None:
    current = settings(plan_worker_url="https://w.example/plan", draft_worker_url="https://w.example/draft")
    assert (current.worker_url("plan"), current.worker_url("draft")) == (
        "https://w.example/plan",
        "https://w.example/draft",
    )


def test_a_missing_worker_url_is_an_error_when_it_is_needed() -> None:
    current = settings(dispatch="cloud-tasks", cloud_tasks_queue=QUEUE)
    with pytest.raises(ConfigurationError, match="PLAN_WORKER_URL is not set"):
        current.worker_url("plan")
    with pytest.raises(ConfigurationError, match="DRAFT_WORKER_URL is not set"):
        current.worker_url("draft")


def test_a_kind_without_a_worker_setting_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="no worker URL setting for request kind 'invoice'"):
        settings(plan_worker_url="https://w.example/plan").worker_url("invoice")


def test_cloud_tasks_without_a_queue_is_an_error_when_used_never_inline() -> None:
    current = settings(dispatch="cloud-tasks", webhook_secret="s" * 32)
    assert current.dispatch_mode == "cloud-tasks"
    with pytest.raises(ConfigurationError, match="CLOUD_TASKS_QUEUE is not set"):
        cloud_tasks_queue(current)


def test_a_queue_needs_the_webhook_secret_the_worker_requires() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET is not set"):
        cloud_tasks_queue(settings(cloud_tasks_queue=QUEUE))


def test_the_dispatch_deadline_is_the_kinds_llm_timeout_plus_a_margin() -> None:
    current = settings(openai_timeout=45, draft_openai_timeout=80)
    assert (current.dispatch_deadline("plan"), current.dispatch_deadline("draft")) == (75.0, 110.0)


def test_the_default_deadlines_fit_the_default_lease() -> None:
    current = settings(cloud_tasks_queue=QUEUE)
    assert max(current.dispatch_deadline(kind) for kind in ("plan", "draft")) < current.lease_seconds


def test_with_cloud_tasks_the_lease_must_outlive_the_dispatch_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problem = problem_of(
        monkeypatch,
        CLOUD_TASKS_QUEUE=QUEUE,
        LEASE_SECONDS="90",
        OPENAI_TIMEOUT="60",
        DRAFT_OPENAI_TIMEOUT="50",
    )
    assert "LEASE_SECONDS (90) must be larger than the plan dispatch deadline (90 s" in problem


def test_the_draft_deadline_counts_too(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = problem_of(
        monkeypatch,
        DISPATCH="cloud-tasks",
        LEASE_SECONDS="110",
        OPENAI_TIMEOUT="60",
        DRAFT_OPENAI_TIMEOUT="90",
    )
    assert "the draft dispatch deadline (120 s" in problem


def test_inline_dispatch_does_not_constrain_the_lease_beyond_the_llm_call() -> None:
    assert settings(lease_seconds=100, openai_timeout=60, draft_openai_timeout=60).lease_seconds == 100


def test_a_deadline_above_cloud_tasks_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = problem_of(monkeypatch, CLOUD_TASKS_QUEUE=QUEUE, LEASE_SECONDS="4000", OPENAI_TIMEOUT="1790")
    assert "above Cloud Tasks' 1800 s" in problem
