"""What the fault drills drive planbus with: the scheduler, a hostile webhook sender, a prober, and a
PostgreSQL server of their own that they may stop and start.

    Sweeper        calls the sweeper target every few seconds, one call at a time, as a scheduler would
    Deliverer      LISTENs where the trigger publishes each insert and delivers every webhook `copies`
                   times (spread over a second), except a share it drops; like pg_net it never retries, so
                   a delivery that fails (a dead worker, a 503) is left to the sweeper
    Prober         posts to a URL one request after another and records when each was sent and answered
    own_postgres   an embedded PostgreSQL in a folder of our own: stop() and start() keep its data and port
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import targets

from planbus.embedded import EmbeddedPostgres


class Sweeper:
    """Calls `url` every `every` seconds (after the previous call answered), until stopped."""

    def __init__(self, url: str, every: float) -> None:
        self.url = url
        self.every = every
        self.calls = 0
        self.answers: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    def __enter__(self) -> Sweeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                response = httpx.post(self.url, json={}, headers=targets.headers(), timeout=180)
                self.answers[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                self.answers[type(exc).__name__] += 1
            self.calls += 1


def describe(response: httpx.Response) -> str:
    """`200 completed`, `200 skipped`, `503`, ...: a delivery's answer in one word or two."""
    if response.status_code != 200:
        return str(response.status_code)
    try:
        return f"200 {targets.outcome_of(response.json())}"
    except ValueError:
        return "200 (not JSON)"


class Deliverer:
    """Delivers each published insert `copies` times to `url`, dropping a `drop` share of them."""

    def __init__(
        self, database_url: str, url: str, *, copies: int = 3, drop: float = 0.1, seed: int = 0
    ) -> None:
        self.database_url = database_url
        self.url = url
        self.copies = copies
        self.drop = drop
        self.dropped = 0
        self.published = 0
        self.answers: Counter[str] = Counter()
        self.log: list[tuple[float, float, str]] = []  # (sent, answered, answer), monotonic seconds
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=60, headers=targets.headers())
        self._pool = ThreadPoolExecutor(max_workers=24, thread_name_prefix="deliverer")
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="deliverer", daemon=True)

    def __enter__(self) -> Deliverer:
        self._thread.start()
        if not self._listening.wait(30):
            raise RuntimeError("the deliverer could not LISTEN")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True)
        self._client.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(f"LISTEN {targets.WEBHOOK_CHANNEL}")
                    self._listening.set()
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=0.2):
                            self._publish(notification.payload)
            except psycopg.Error:
                self._stop.wait(0.2)  # the server is restarting: listen again once it is back

    def _publish(self, payload: str) -> None:
        with self._lock:
            self.published += 1
            if self._random.random() < self.drop:
                self.dropped += 1
                return
            delays = [0.0, *sorted(self._random.uniform(0.0, 1.0) for _ in range(self.copies - 1))]
        for delay in delays:
            self._pool.submit(self._deliver, payload, delay)

    def _deliver(self, payload: str, delay: float) -> None:
        if delay:
            time.sleep(delay)
        sent = time.monotonic()
        try:
            answer = describe(self._client.post(self.url, content=payload))
        except httpx.HTTPError as exc:
            answer = type(exc).__name__
        with self._lock:
            self.answers[answer] += 1
            self.log.append((sent, time.monotonic(), answer))


class Prober:
    """Posts `body` to `url` again and again (`gap` seconds apart) and records every answer."""

    def __init__(
        self, url: str, body: Callable[[], dict[str, Any]], *, gap: float = 0.1, timeout: float = 60
    ) -> None:
        self.url = url
        self.body = body
        self.gap = gap
        self.timeout = timeout
        self.log: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, headers=targets.headers()) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    answer = str(client.post(self.url, json=self.body()).status_code)
                except httpx.HTTPError as exc:
                    answer = type(exc).__name__
                self.log.append((sent, time.monotonic(), answer))
                self._stop.wait(self.gap)

    def first_after(self, moment: float, answer: str) -> tuple[float, float, str] | None:
        """The first probe answered `answer` after `moment`."""
        return next((entry for entry in self.log if entry[1] > moment and entry[2] == answer), None)


@dataclass
class OwnServer:
    """An embedded PostgreSQL the drill may stop and start; `url` is its admin URL."""

    embedded: EmbeddedPostgres
    url: str

    def stop(self) -> None:
        self.embedded.stop()

    def start(self) -> None:
        self.embedded.start()


@contextmanager
def own_postgres() -> Iterator[OwnServer]:
    """A new embedded PostgreSQL in a folder of our own (so stopping it keeps the data), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="planbus-drill-pg-"))
    embedded = EmbeddedPostgres(base_dir=folder)
    try:
        url = embedded.start()
        yield OwnServer(embedded, url)
    finally:
        try:
            embedded.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
