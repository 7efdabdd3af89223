"""The local Cloud Tasks: the `gcloud-tasks-emulator` package (PyPI) as a supervised process.

It serves the real CloudTasks gRPC API on a free port, so the functions enqueue exactly as in the cloud
(google-cloud-tasks over `CLOUD_TASKS_EMULATOR_HOST`, no credentials), and it POSTs each HTTP task to its
URL. What it does differently from Cloud Tasks, as checked by running it (0.6.2):
- one task at a time per queue (a thread per queue, polling every 0.1 s), however many workers there are;
- a non-2xx answer or a refused connection is retried at once, with no backoff, up to `--max-retries`
  times (forever without it); schedule_time is honoured;
- it keeps every task in memory only (a restart forgets them: the sweeper re-enqueues the rows);
- it does not deduplicate task names, ignores the dispatch deadline (it waits for the worker however
  long), sends no OIDC token, and adds `X-CloudTasks-QueueName`, `-TaskName`, `-TaskRetryCount`,
  `-TaskExecutionCount` and `-TaskETA` headers to the task's own.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from planbus.devstack.console import Console
from planbus.devstack.supervisor import ManagedProcess, free_port
from planbus.errors import ConfigurationError
from planbus.settings import Settings

Dispatch = Literal["cloud-tasks", "inline"]

LOCAL_QUEUE = "projects/planbus-local/locations/local/queues/planbus"
# The emulator retries at once, 0.1 s apart: a few tries ride over a worker restarting, and a task whose
# worker stays down is dropped soon rather than retried forever (the sweeper picks its row up later).
MAX_RETRIES = 5
START_TIMEOUT = 60.0
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
# The settings a local stack decides itself: a developer's shell must not send local tasks to a real queue.
_DISPATCH_VARIABLES = (
    "DISPATCH",
    "CLOUD_TASKS_QUEUE",
    "CLOUD_TASKS_EMULATOR_HOST",
    "CLOUD_TASKS_SERVICE_ACCOUNT",
)


def emulator_command(port: int, queue: str = LOCAL_QUEUE, max_retries: int = MAX_RETRIES) -> list[str]:
    """`gcloud-tasks-emulator start --port P --default-queue Q --max-retries N --quiet`, from this
    environment (quiet: only failed deliveries are logged, not every 0.1 s poll of a scheduled task)."""
    script = Path(sys.executable).parent / "gcloud-tasks-emulator"
    if script.exists():
        launcher = [str(script)]
    elif importlib.util.find_spec("gcloud_tasks_emulator") is not None:
        launcher = [sys.executable, "-m", "gcloud_tasks_emulator"]
    else:
        raise ConfigurationError(
            "gcloud-tasks-emulator is not installed: pip install -e '.[local]' "
            "(or run the stack with --dispatch inline)"
        )
    return [
        *launcher,
        "start",
        f"--port={port}",
        f"--default-queue={queue}",
        f"--max-retries={max_retries}",
        "--quiet",
    ]


def grpc_port_open(host: str, port: int) -> Callable[[], bool]:
    """Readiness: the port takes connections (the emulator creates its queue before it listens)."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


class TasksEmulator:
    """One emulator process with one queue; `host` is what CLOUD_TASKS_EMULATOR_HOST should say."""

    def __init__(
        self,
        console: Console,
        *,
        host: str = "127.0.0.1",
        queue: str = LOCAL_QUEUE,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.queue = queue
        self.max_retries = max_retries
        self.port = free_port(host)
        self.host = f"{host}:{self.port}"
        self.process = ManagedProcess(
            "cloud-tasks-emulator",
            emulator_command(self.port, queue, max_retries),
            env=emulator_environment(),
            console=console,
            ready=grpc_port_open(host, self.port),
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the emulator and wait until it takes gRPC connections."""
        self.process.start(timeout)

    def stop(self) -> None:
        self.process.stop()

    def environment(self) -> dict[str, str]:
        """The settings that point a function at this emulator's queue."""
        return {
            "DISPATCH": "cloud-tasks",
            "CLOUD_TASKS_EMULATOR_HOST": self.host,
            "CLOUD_TASKS_QUEUE": self.queue,
        }


def emulator_environment() -> dict[str, str]:
    """Ours, unbuffered, and without proxy variables: the emulator posts with urllib, which would send
    tasks for 127.0.0.1 through a proxy named in the environment. google-api-core's notice that it will
    drop Python 3.11 is silenced: it is not about the stack."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}


@dataclass(frozen=True)
class Worker:
    """A kind's worker as the stack serves it: the webhook that enqueues for it, its own target, and the
    setting that tells the webhook its URL."""

    webhook: str  # handle_plan_request
    target: str  # process_plan_request
    url_setting: str  # PLAN_WORKER_URL


class LocalDispatch:
    """How the local stack dispatches: `cloud-tasks` (the emulator, and every kind's worker as a server of
    its own: the sweeper enqueues for every kind, whichever webhooks run) or `inline` (the webhooks do the
    work, as before the queue existed)."""

    def __init__(
        self,
        mode: Dispatch,
        console: Console,
        *,
        functions: Sequence[str],
        workers: Sequence[Worker],
        host: str = "127.0.0.1",
    ) -> None:
        self.mode = mode
        self.console = console
        self.host = host
        self.emulator: TasksEmulator | None = None
        worker_targets = {worker.target for worker in workers}
        self._replaced = {*_DISPATCH_VARIABLES, *(worker.url_setting for worker in workers)}
        served = [name for name in functions if name not in worker_targets]
        self.workers = list(workers) if mode == "cloud-tasks" and served else []
        self.targets: tuple[str, ...] = (*served, *(worker.target for worker in self.workers))

    def start(self, settings: Settings) -> None:
        """Check that the functions' settings allow Cloud Tasks, then start the emulator; nothing to do
        inline or when the stack serves no function."""
        if not self.workers:
            return
        try:
            Settings(**{**settings.model_dump(), "dispatch": "cloud-tasks", "cloud_tasks_queue": LOCAL_QUEUE})
        except ValueError as exc:
            raise ConfigurationError(f"{exc}\n(or run the stack with --dispatch inline)") from exc
        self.emulator = TasksEmulator(self.console, host=self.host)
        self.emulator.start()

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def environment(self, base: Mapping[str, str], urls: Mapping[str, str]) -> dict[str, str]:
        """`base` with the dispatch settings of this stack: the emulator's queue and each worker's URL, or
        DISPATCH=inline; whatever the developer's shell says about Cloud Tasks is replaced."""
        env = {k: v for k, v in base.items() if k.upper() not in self._replaced}
        if self.emulator is None:
            return {**env, "DISPATCH": "inline"}
        env.update(self.emulator.environment())
        for worker in self.workers:
            if worker.target in urls:
                env[worker.url_setting] = urls[worker.target]
        return env

    def describe(self) -> list[str]:
        """Lines for the stack's description."""
        if self.emulator is None:
            return [f"  {'dispatch':<21} inline: each webhook makes its LLM call itself"]
        workers = ", ".join(worker.target for worker in self.workers)
        return [
            f"  {'cloud tasks emulator':<21} {self.emulator.host}  (gcloud-tasks-emulator, pid "
            f"{self.emulator.pid}; queue {self.emulator.queue})",
            f"  {'dispatch':<21} cloud-tasks: the webhooks enqueue, the emulator POSTs {workers}, "
            "one task at a time",
        ]

    def state(self) -> dict[str, Any]:
        """What tools need to find the emulator."""
        if self.emulator is None:
            return {"mode": "inline"}
        return {
            "mode": "cloud-tasks",
            "emulator": {"host": self.emulator.host, "queue": self.emulator.queue, "pid": self.emulator.pid},
        }
