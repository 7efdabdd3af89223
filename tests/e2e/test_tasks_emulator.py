"""The local Cloud Tasks emulator as the stack runs it (gcloud-tasks-emulator, a supervised process), fed
by planbus's own Cloud Tasks adapter: what it delivers, how it retries, what it does not do.

These pin the behaviour the README's local section describes, so an upgrade of the emulator that changes
it fails here rather than in a developer's stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from planbus.devstack.tasks_emulator import LOCAL_QUEUE, TasksEmulator
from planbus.dispatch import TaskRequest
from planbus.dispatch.cloud_tasks import CloudTasksQueue
from support.devstack_helpers import RecordingEndpoint, memory_console, wait_until

pytestmark = pytest.mark.e2e

SECRET = "emulator-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def emulator() -> Iterator[TasksEmulator]:
    console, _ = memory_console()
    server = TasksEmulator(console, max_retries=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def queue(emulator: TasksEmulator) -> Iterator[CloudTasksQueue]:
    tasks = CloudTasksQueue(
        LOCAL_QUEUE,
        secret=SECRET,
        deadline=lambda _kind: 90.0,
        service_account="planbus-tasks@planbus-test.iam.gserviceaccount.com",
        emulator_host=emulator.host,
    )
    yield tasks
    tasks.close()


def test_a_task_reaches_its_url_with_the_secret_and_the_cloud_tasks_headers(queue: CloudTasksQueue) -> None:
    with RecordingEndpoint().running() as worker:
        result = queue.enqueue(TaskRequest("plan", "r-headers", 1, f"{worker.url}/process_plan_request"))
        wait_until(lambda: worker.received, timeout=10)
    assert result.created
    [delivery] = worker.received
    assert delivery.path == "/process_plan_request"
    assert delivery.json() == {"request_id": "r-headers"}
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    assert headers["x-webhook-secret"] == SECRET
    assert headers["content-type"] == "application/json"
    assert headers["x-cloudtasks-queuename"] == LOCAL_QUEUE
    assert headers["x-cloudtasks-taskname"] == "plan-r-headers-1"
    assert headers["x-cloudtasks-taskretrycount"] == "0"
    # No OIDC token: the emulator has no identity to mint one with.
    assert "authorization" not in headers


def test_a_failed_delivery_is_retried_at_once_up_to_max_retries_then_dropped(queue: CloudTasksQueue) -> None:
    with RecordingEndpoint(statuses=[503]).running() as worker:
        queue.enqueue(TaskRequest("plan", "r-retries", 1, f"{worker.url}/process_plan_request"))
        wait_until(lambda: len(worker.received) >= 3, timeout=10)
        time.sleep(1.0)  # ten more polls: nothing else comes
        received = list(worker.received)
    assert [r.headers["X-Cloudtasks-Taskretrycount"] for r in received] == ["0", "1", "2"]


def test_a_scheduled_task_waits_for_its_schedule_time(queue: CloudTasksQueue) -> None:
    with RecordingEndpoint().running() as worker:
        run_at = datetime.now(UTC) + timedelta(seconds=1.5)
        queue.enqueue(TaskRequest("plan", "r-later", 2, f"{worker.url}/process_plan_request", run_at=run_at))
        wait_until(lambda: worker.received, timeout=10)
        arrived = datetime.now(UTC)
    assert arrived >= run_at


def test_the_emulator_does_not_deduplicate_task_names(queue: CloudTasksQueue) -> None:
    with RecordingEndpoint().running() as worker:
        first = queue.enqueue(TaskRequest("plan", "r-twice", 1, f"{worker.url}/process_plan_request"))
        again = queue.enqueue(TaskRequest("plan", "r-twice", 1, f"{worker.url}/process_plan_request"))
        wait_until(lambda: len(worker.received) == 2, timeout=10)
    # Cloud Tasks answers the second ALREADY_EXISTS; the emulator runs both (the worker's claim copes).
    assert (first.created, again.created) == (True, True)
