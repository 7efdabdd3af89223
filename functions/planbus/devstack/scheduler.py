"""The local Cloud Scheduler: POSTs each scheduled function on its interval with the shared secret.

Each job has its own thread, so a slow sweep never delays reminders. The first call happens at start
(whatever was due while the stack was down goes out at once), then every `every` seconds measured from
the previous start, without overlapping calls of one job. Quiet calls are not logged; calls that did
something, or failed, are.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from planbus.devstack.console import Console


@dataclass(frozen=True)
class Job:
    """One schedule: POST `body` to `url` every `every` seconds."""

    name: str
    url: str
    every: float
    body: dict[str, Any] = field(default_factory=dict)


class Scheduler:
    """Runs every job on its interval until `stop()`; `run_now(name)` triggers one early."""

    def __init__(self, jobs: list[Job], secret: str, *, console: Console, timeout: float = 120.0) -> None:
        for job in jobs:
            if job.every <= 0:
                raise ValueError(f"{job.name}: the interval must be positive, not {job.every}")
        self.jobs = {job.name: job for job in jobs}
        self.console = console
        self.calls: dict[str, int] = {job.name: 0 for job in jobs}
        self.last_answer: dict[str, Any] = {}
        self._headers = {"X-Webhook-Secret": secret}
        self._client = httpx.Client(timeout=timeout)
        self._stop = threading.Event()
        self._wake = {job.name: threading.Event() for job in jobs}
        self._threads = [
            threading.Thread(target=self._loop, args=(job,), name=f"scheduler-{job.name}", daemon=True)
            for job in jobs
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._client.close()

    def run_now(self, name: str) -> None:
        """Call the job at once instead of at its next tick."""
        self._wake[name].set()

    def _loop(self, job: Job) -> None:
        wake = self._wake[job.name]
        while not self._stop.is_set():
            started = time.monotonic()
            self._call(job)
            wake.wait(max(0.0, job.every - (time.monotonic() - started)))
            wake.clear()

    def _call(self, job: Job) -> None:
        try:
            response = self._client.post(job.url, json=job.body, headers=self._headers)
        except httpx.HTTPError as exc:
            if not self._stop.is_set():
                self.console.event(
                    "scheduler", "WARNING", f"{job.name} call failed: {type(exc).__name__}: {exc}"
                )
            return
        self.calls[job.name] += 1
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text[:200]
        self.last_answer[job.name] = answer
        if response.status_code != 200:
            self.console.event(
                "scheduler", "ERROR", f"{job.name} answered HTTP {response.status_code}", answer=answer
            )
        elif isinstance(answer, dict) and any(isinstance(v, int) and v for v in answer.values()):
            counts = {k: v for k, v in answer.items() if isinstance(v, int | float | str)}
            self.console.event("scheduler", "INFO", f"{job.name} did work", **counts)
