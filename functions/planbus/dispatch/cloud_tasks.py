"""The Google Cloud Tasks adapter: CreateTask over gRPC with google-cloud-tasks, errors mapped at the edge.

The client is made by the first `enqueue`, not before: importing `google.cloud.tasks_v2` costs about half
a second, which only the dispatch path should pay. One queue object keeps one channel for the process's
life (warm instances reuse it); a call waits at most `timeout` seconds, since the webhook that enqueues
must answer in milliseconds.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from planbus.dispatch import EnqueueError, EnqueueResult, TaskRequest

if TYPE_CHECKING:
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2 import CloudTasksClient

# google-api-core warns once per process, on import, that it will drop Python 3.11; the cloud runs 3.12.
warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)

# Seconds one CreateTask call may take before the webhook gives up and leaves the row to the sweeper:
# far below pg_net's 5 s, far above CreateTask's usual tens of milliseconds.
ENQUEUE_TIMEOUT = 2.0


class CloudTasksQueue:
    """A Cloud Tasks queue (or the emulator's) that tasks are created on; thread-safe."""

    def __init__(
        self,
        queue: str,
        *,
        secret: str,
        deadline: Callable[[str], float],
        service_account: str | None = None,
        emulator_host: str | None = None,
        timeout: float = ENQUEUE_TIMEOUT,
    ) -> None:
        self.queue = queue
        self.service_account = service_account
        self.emulator_host = emulator_host
        self.timeout = timeout
        self._secret = secret
        self._deadline = deadline
        self._client: CloudTasksClient | None = None
        self._lock = threading.Lock()

    def enqueue(self, task: TaskRequest) -> EnqueueResult:
        """CreateTask `<queue>/tasks/<kind>-<request_id>-<attempt>`; ALREADY_EXISTS is `created=False`."""
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        name = f"{self.queue}/tasks/{task.task_id}"
        try:
            self._connected().create_task(
                parent=self.queue, task=self._task(name, task), timeout=self.timeout, retry=None
            )
        except api_exceptions.AlreadyExists:
            return EnqueueResult(created=False, task_name=name)
        except api_exceptions.GoogleAPICallError as exc:
            code = exc.grpc_status_code.name if exc.grpc_status_code is not None else "UNKNOWN"
            raise EnqueueError(self._problem(task, code, exc.message), code=code) from exc
        except auth_exceptions.GoogleAuthError as exc:
            # No credentials, or none that can be refreshed: the queue never saw the call.
            raise EnqueueError(
                self._problem(task, "UNAUTHENTICATED", str(exc)), code="UNAUTHENTICATED"
            ) from exc
        return EnqueueResult(created=True, task_name=name)

    def close(self) -> None:
        """Close the channel; a later `enqueue` opens a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()  # type: ignore[no-untyped-call]

    def _task(self, name: str, task: TaskRequest) -> tasks_v2.Task:
        from google.cloud import tasks_v2

        oidc_token = (
            # Cloud Run checks the token (roles/run.invoker) before the function checks the secret.
            tasks_v2.OidcToken(service_account_email=self.service_account, audience=task.worker_url)
            if self.service_account
            else None
        )
        return tasks_v2.Task(
            name=name,
            http_request=tasks_v2.HttpRequest(
                url=task.worker_url,
                http_method=tasks_v2.HttpMethod.POST,
                headers={"Content-Type": "application/json", "X-Webhook-Secret": self._secret},
                body=json.dumps({"request_id": task.request_id}).encode(),
                oidc_token=oidc_token,
            ),
            dispatch_deadline=timedelta(seconds=self._deadline(task.kind)),
            schedule_time=task.run_at,
        )

    def _connected(self) -> CloudTasksClient:
        with self._lock:
            if self._client is None:
                self._client = _client(self.emulator_host)
            return self._client

    def _problem(self, task: TaskRequest, code: str, detail: str | None) -> str:
        # Whatever the server echoed, the secret the task carries is not repeated in an error.
        text = (detail or "").replace(self._secret, "***")[:300]
        return f"Cloud Tasks did not take task {task.task_id}: {code}: {text}".rstrip(": ")


def _client(emulator_host: str | None) -> CloudTasksClient:
    """A client for Google's endpoint with the ambient credentials, or for a local emulator over plain
    gRPC without any."""
    from google.cloud.tasks_v2 import CloudTasksClient

    if emulator_host is None:
        return CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    return CloudTasksClient(transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(emulator_host)))
