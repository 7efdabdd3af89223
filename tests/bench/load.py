"""HTTP clients for the benchmarks: `concurrency` threads with a keep-alive connection each, posting one
body after another as fast as the server answers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Load:
    """What a run of requests did: wall time, each request's latency (ms), the answers' outcomes."""

    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def __iadd__(self, other: Load) -> Load:
        self.wall += other.wall
        self.latencies += other.latencies
        self.outcomes += other.outcomes
        return self

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def drive(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    headers: dict[str, str] | None = None,
    outcome: Callable[[httpx.Response], str] = lambda r: str(r.status_code),
) -> Load:
    """POST every body to `url` from `concurrency` clients; returns when all are answered."""
    load = Load()
    lock = threading.Lock()
    queue = iter(bodies)
    errors: list[BaseException] = []

    def client() -> None:
        with httpx.Client(timeout=120, headers=headers) as http:
            while True:
                with lock:
                    body = next(queue, None)
                if body is None:
                    return
                started = time.perf_counter()
                try:
                    response = http.post(url, json=body)
                except httpx.HTTPError as exc:
                    errors.append(exc)
                    return
                elapsed = (time.perf_counter() - started) * 1000
                result = outcome(response)
                with lock:
                    load.latencies.append(elapsed)
                    load.outcomes[result] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) to {url} failed: {errors[0]!r}") from errors[0]
    return load
