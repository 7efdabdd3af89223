"""Cloud Tasks at its transport: an in-process gRPC server speaking the real CloudTasks service's CreateTask.

Point the adapter at it with `CLOUD_TASKS_EMULATOR_HOST=fake.host` (plain gRPC, as for the emulator). It
records every CreateTaskRequest exactly as the client sent it and answers as Cloud Tasks does: the task, or
ALREADY_EXISTS for a name it has seen (Cloud Tasks keeps a name for about an hour, the emulator not at
all). `fail_with(code)` makes the next calls fail with a gRPC status; `hang(seconds)` holds them past a
client's deadline.

    with FakeCloudTasks() as fake:
        ... enqueue through CLOUD_TASKS_EMULATOR_HOST=fake.host ...
        [task] = fake.tasks
        assert task.url == "https://worker.example/process_plan_request"
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.cloud import tasks_v2

SERVICE = "google.cloud.tasks.v2.CloudTasks"
QUEUE = "projects/planbus-test/locations/europe-west1/queues/planbus"


@dataclass(frozen=True)
class CreatedTask:
    """One CreateTask call as it reached Cloud Tasks, with what each field means spelled out."""

    queue: str
    name: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    oidc_service_account: str | None
    oidc_audience: str | None
    dispatch_deadline: float | None
    schedule_time: datetime | None
    request: tasks_v2.CreateTaskRequest

    @property
    def task_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def json(self) -> Any:
        return json.loads(self.body)

    @classmethod
    def from_request(cls, request: tasks_v2.CreateTaskRequest) -> CreatedTask:
        task = request.task
        http = task.http_request
        token = http.oidc_token if "oidc_token" in http else None
        return cls(
            queue=request.parent,
            name=task.name,
            url=http.url,
            method=http.http_method.name,
            headers=dict(http.headers),
            body=http.body,
            oidc_service_account=token.service_account_email if token else None,
            oidc_audience=token.audience if token else None,
            dispatch_deadline=task.dispatch_deadline.total_seconds() if "dispatch_deadline" in task else None,
            schedule_time=task.schedule_time if "schedule_time" in task else None,
            request=request,
        )


class FakeCloudTasks:
    """A CloudTasks gRPC server on 127.0.0.1; `host` is its `host:port`."""

    def __init__(self) -> None:
        self.calls: list[CreatedTask] = []  # every CreateTask, duplicates and failures included
        self.tasks: list[CreatedTask] = []  # the tasks it created
        self._names: set[str] = set()
        self._failures: list[grpc.StatusCode] = []
        self._failing: grpc.StatusCode | None = None
        self._hang = 0.0
        # A server that echoes the request in its errors, to check the client never repeats the secret.
        self.echo_headers_in_errors = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateTask": grpc.unary_unary_rpc_method_handler(
                    self._create_task,
                    request_deserializer=tasks_v2.CreateTaskRequest.deserialize,
                    response_serializer=tasks_v2.Task.serialize,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.host = f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeCloudTasks:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._server.stop(grace=None)

    def fail_with(self, code: grpc.StatusCode, *, times: int | None = None) -> None:
        """Answer the next `times` calls (every call when None) with this status instead of a task."""
        with self._lock:
            if times is None:
                self._failing = code
            else:
                self._failures.extend([code] * times)

    def recover(self) -> None:
        """Answer normally again."""
        with self._lock:
            self._failing, self._failures, self._hang = None, [], 0.0

    def hang(self, seconds: float) -> None:
        """Hold every call this long before answering (the server is released early when it stops)."""
        with self._lock:
            self._hang = seconds

    def task_ids(self) -> list[str]:
        return [task.task_id for task in self.tasks]

    def _create_task(
        self, request: tasks_v2.CreateTaskRequest, context: grpc.ServicerContext
    ) -> tasks_v2.Task:
        call = CreatedTask.from_request(request)
        with self._lock:
            self.calls.append(call)
            hang = self._hang
            failure = self._failures.pop(0) if self._failures else self._failing
        if hang:
            self._released.wait(hang)
        if failure is not None:
            echoed = f" (headers {call.headers})" if self.echo_headers_in_errors else ""
            context.abort(failure, f"the fake queue answers {failure.name}{echoed}")
        with self._lock:
            if call.name in self._names:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Requested entity already exists: {call.name}")
            self._names.add(call.name)
            self.tasks.append(call)
        return request.task
