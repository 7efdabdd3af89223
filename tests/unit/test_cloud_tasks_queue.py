"""The Cloud Tasks adapter against a CloudTasks gRPC server: the exact CreateTask it sends, duplicates as an
answer, and every failure (refused, unreachable, too slow) as an EnqueueError that never shows the secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from pydantic import SecretStr

from planbus.dispatch import (
    EnqueueError,
    EnqueueResult,
    TaskQueue,
    TaskRequest,
    cloud_tasks,
    cloud_tasks_queue,
)
from planbus.dispatch.cloud_tasks import CloudTasksQueue
from planbus.errors import PlanbusError
from planbus.settings import Settings
from support.cloud_tasks import QUEUE, FakeCloudTasks
from support.concurrency import run_together

if TYPE_CHECKING:
    from google.cloud.tasks_v2 import CloudTasksClient

ROOT = Path(__file__).resolve().parents[2]
SECRET = "webhook-secret-for-the-task-headers-0123456789"
PLAN_URL = "https://europe-west1-planbus-test.cloudfunctions.net/process_plan_request"
DRAFT_URL = "https://europe-west1-planbus-test.cloudfunctions.net/process_draft_request"
TASKS_ACCOUNT = "planbus-tasks@planbus-test.iam.gserviceaccount.com"
REQUEST_ID = "3f1c2b9e-8d4a-4e6f-9a1b-2c3d4e5f6a7b"


@pytest.fixture
def fake() -> Iterator[FakeCloudTasks]:
    with FakeCloudTasks() as server:
        yield server


def settings_for(fake: FakeCloudTasks, **values: object) -> Settings:
    return Settings(
        webhook_secret=SecretStr(SECRET),
        cloud_tasks_queue=QUEUE,
        plan_worker_url=PLAN_URL,
        draft_worker_url=DRAFT_URL,
        cloud_tasks_emulator_host=fake.host,
        **values,  # type: ignore[arg-type]
    )


@pytest.fixture
def queue(fake: FakeCloudTasks) -> Iterator[TaskQueue]:
    tasks = cloud_tasks_queue(settings_for(fake, cloud_tasks_service_account=TASKS_ACCOUNT))
    yield tasks
    tasks.close()


def plan_task(attempt: int = 1, **fields: object) -> TaskRequest:
    return TaskRequest("plan", REQUEST_ID, attempt, PLAN_URL, **fields)  # type: ignore[arg-type]


def test_enqueue_sends_the_whole_create_task_request(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    result = queue.enqueue(plan_task())

    assert result == EnqueueResult(created=True, task_name=f"{QUEUE}/tasks/plan-{REQUEST_ID}-1")
    [task] = fake.tasks
    assert task.queue == QUEUE
    assert task.name == f"{QUEUE}/tasks/plan-{REQUEST_ID}-1"
    assert (task.method, task.url) == ("POST", PLAN_URL)
    assert task.headers == {"Content-Type": "application/json", "X-Webhook-Secret": SECRET}
    assert task.json() == {"request_id": REQUEST_ID}
    assert (task.oidc_service_account, task.oidc_audience) == (TASKS_ACCOUNT, PLAN_URL)
    assert task.dispatch_deadline == 90.0  # OPENAI_TIMEOUT 60 + 30
    assert task.schedule_time is None


def test_a_draft_task_goes_to_the_draft_worker_with_the_draft_deadline(
    fake: FakeCloudTasks, queue: TaskQueue
) -> None:
    queue.enqueue(TaskRequest("draft", REQUEST_ID, 2, DRAFT_URL))
    [task] = fake.tasks
    assert task.task_id == f"draft-{REQUEST_ID}-2"
    assert (task.url, task.oidc_audience) == (DRAFT_URL, DRAFT_URL)
    assert task.dispatch_deadline == 120.0  # DRAFT_OPENAI_TIMEOUT 90 + 30


def test_a_task_for_later_carries_its_schedule_time(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    run_at = datetime(2031, 5, 17, 9, 30, 15, 250000, tzinfo=UTC)
    queue.enqueue(plan_task(2, run_at=run_at))
    [task] = fake.tasks
    assert task.schedule_time == run_at


def test_without_a_service_account_a_task_carries_no_oidc_token(fake: FakeCloudTasks) -> None:
    queue = cloud_tasks_queue(settings_for(fake))
    try:
        queue.enqueue(plan_task())
    finally:
        queue.close()
    [task] = fake.tasks
    assert "oidc_token" not in task.request.task.http_request
    assert task.headers["X-Webhook-Secret"] == SECRET


def test_the_same_attempt_enqueued_again_is_a_duplicate_not_an_error(
    fake: FakeCloudTasks, queue: TaskQueue
) -> None:
    first = queue.enqueue(plan_task())
    again = queue.enqueue(plan_task())
    assert (first.created, again.created) == (True, False)
    assert again.task_name == first.task_name
    assert len(fake.calls) == 2 and len(fake.tasks) == 1


def test_three_concurrent_deliveries_make_one_task(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    results = run_together([lambda: queue.enqueue(plan_task())] * 3)
    assert sorted(r.created for r in results) == [False, False, True]
    assert fake.task_ids() == [f"plan-{REQUEST_ID}-1"]


def test_the_next_attempt_is_a_new_task(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    assert queue.enqueue(plan_task(1)).created
    assert queue.enqueue(plan_task(2)).created
    assert fake.task_ids() == [f"plan-{REQUEST_ID}-1", f"plan-{REQUEST_ID}-2"]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND]
)
def test_a_refusal_is_an_enqueue_error_with_its_grpc_code(
    fake: FakeCloudTasks, queue: TaskQueue, code: grpc.StatusCode
) -> None:
    fake.fail_with(code, times=1)
    with pytest.raises(EnqueueError) as caught:
        queue.enqueue(plan_task())
    assert caught.value.code == code.name
    assert isinstance(caught.value, PlanbusError)
    assert f"plan-{REQUEST_ID}-1: {code.name}" in str(caught.value)
    assert fake.tasks == []
    # The queue recovers and the same attempt can be enqueued again (the sweeper does this).
    assert queue.enqueue(plan_task()).created


def test_a_queue_that_does_not_answer_in_time_is_deadline_exceeded(fake: FakeCloudTasks) -> None:
    fake.hang(5.0)
    queue = CloudTasksQueue(
        QUEUE, secret=SECRET, deadline=lambda _kind: 90.0, emulator_host=fake.host, timeout=0.3
    )
    started = time.monotonic()
    try:
        with pytest.raises(EnqueueError) as caught:
            queue.enqueue(plan_task())
    finally:
        queue.close()
    assert caught.value.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.0


def test_the_default_call_timeout_is_short(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    assert isinstance(queue, CloudTasksQueue)
    assert queue.timeout <= 2.0


def test_an_unreachable_queue_fails_at_once_as_unavailable() -> None:
    with FakeCloudTasks() as stopped:
        host = stopped.host
    queue = CloudTasksQueue(QUEUE, secret=SECRET, deadline=lambda _kind: 90.0, emulator_host=host)
    started = time.monotonic()
    try:
        with pytest.raises(EnqueueError) as caught:
            queue.enqueue(plan_task())
    finally:
        queue.close()
    assert caught.value.code == "UNAVAILABLE"
    assert time.monotonic() - started < 1.5


def test_an_enqueue_error_never_shows_the_secret(fake: FakeCloudTasks, queue: TaskQueue) -> None:
    fake.fail_with(grpc.StatusCode.INVALID_ARGUMENT, times=1)
    fake.echo_headers_in_errors = True
    with pytest.raises(EnqueueError) as caught:
        queue.enqueue(plan_task())
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    assert "***" in str(caught.value)


def test_one_channel_serves_every_call_until_closed(fake: FakeCloudTasks) -> None:
    queue = CloudTasksQueue(QUEUE, secret=SECRET, deadline=lambda _kind: 90.0, emulator_host=fake.host)
    queue.enqueue(plan_task(1))
    client = queue._client
    queue.enqueue(plan_task(2))
    assert queue._client is client is not None
    queue.close()
    assert queue._client is None
    assert queue.enqueue(plan_task(3)).created  # a closed queue reconnects
    queue.close()


def test_concurrent_first_calls_share_one_client(
    fake: FakeCloudTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A webhook instance serves several requests at once: the first ones may all find no client yet. The
    # client (and its channel) is made once for all of them, not once per request or per thread; the
    # factory is slowed down so that calls racing for it would each make one.
    made: list[str | None] = []

    def slow_client(emulator_host: str | None) -> CloudTasksClient:
        made.append(emulator_host)
        time.sleep(0.2)
        return real_client(emulator_host)

    real_client = cloud_tasks._client
    monkeypatch.setattr(cloud_tasks, "_client", slow_client)
    queue = CloudTasksQueue(QUEUE, secret=SECRET, deadline=lambda _kind: 90.0, emulator_host=fake.host)
    try:
        results = run_together([partial(queue.enqueue, plan_task(attempt)) for attempt in range(1, 9)])
    finally:
        queue.close()
    assert all(result.created for result in results)
    assert made == [fake.host]
    assert len(fake.tasks) == 8


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"kind": "plan requests"}, "task kind"),
        ({"request_id": "../../tasks/other"}, "task request_id"),
        ({"attempt": -1}, "negative"),
        ({"worker_url": "process_plan_request"}, r"not an http\(s\) URL"),
        ({"run_at": datetime(2031, 1, 1)}, "timezone-aware"),
        ({"request_id": "x" * 500}, "longer than 500"),
    ],
)
def test_a_malformed_task_request_is_refused(fields: dict[str, object], problem: str) -> None:
    values: dict[str, object] = {
        "kind": "plan",
        "request_id": REQUEST_ID,
        "attempt": 1,
        "worker_url": PLAN_URL,
    }
    with pytest.raises(ValueError, match=problem):
        TaskRequest(**{**values, **fields})  # type: ignore[arg-type]


def test_a_task_request_at_a_time_with_an_offset_is_accepted() -> None:
    run_at = datetime(2031, 1, 1, 12, tzinfo=UTC) + timedelta(minutes=5)
    assert plan_task(run_at=run_at).run_at == run_at


def test_importing_dispatch_loads_no_google_library_until_a_task_is_enqueued(fake: FakeCloudTasks) -> None:
    probe = f"""
import json, sys
sys.path.insert(0, "functions")
from planbus.dispatch import TaskRequest, cloud_tasks_queue
from planbus.settings import Settings
heavy = ("google.cloud.tasks", "google.api_core", "google.protobuf", "grpc")
loaded = lambda: sorted(m for m in sys.modules if m.startswith(heavy))
seen = {{"imported": loaded()}}
queue = cloud_tasks_queue(Settings(webhook_secret="s" * 32, cloud_tasks_queue={QUEUE!r},
                                   cloud_tasks_emulator_host={fake.host!r}))
seen["built"] = loaded()
queue.enqueue(TaskRequest("plan", "r1", 1, "http://127.0.0.1:9/process_plan_request"))
seen["enqueued"] = "google.cloud.tasks_v2" in sys.modules and "grpc" in sys.modules
queue.close()
print(json.dumps(seen))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"imported": [], "built": [], "enqueued": True}
    assert fake.task_ids() == ["plan-r1-1"]


def test_without_google_credentials_enqueue_is_unauthenticated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A credentials file that does not exist: google-auth refuses at once, without probing the network.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    queue = CloudTasksQueue(QUEUE, secret=SECRET, deadline=lambda _kind: 90.0)
    with pytest.raises(EnqueueError) as caught:
        queue.enqueue(plan_task())
    assert caught.value.code == "UNAUTHENTICATED"
    queue.close()
