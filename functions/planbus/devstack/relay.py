"""The local database webhook: what Supabase's pg_net does in the cloud, done from a LISTEN connection.

The trigger on every request kind's table sends its Supabase-format payload with
pg_notify('planbus_events') when neither pg_net nor realtime.publish exists. The relay POSTs each
payload, unchanged, to the webhook of the table it names (`targets`: table -> URL, e.g. plan_requests ->
handle_plan_request) with the shared secret in `X-Webhook-Secret`. Unlike pg_net it retries a failed
delivery (connection refused while a server restarts, a timeout, a 5xx) a few times with backoff, and on
every (re)connect it re-delivers the rows of every kind still pending, since notifications sent while it
was away are lost. A delivery is only a hint: the function claims rows atomically, so a duplicate is
answered `skipped`, and anything the relay gives up on is left to the sweeper (`reset_stale_requests`).
Each give-up and each refusal (4xx) is recorded with planbus_record_delivery (channel 'relay', the
outcome its cause: refused_401, client_error, server_error, timeout, connection_error), so `planbus
status` counts it as pg_net's failures are counted in the cloud.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
from psycopg import sql

from planbus.devstack.console import Console
from planbus.devstack.listener import Connection, Listener
from planbus.kinds import kind_for_table

CHANNEL = "planbus_events"
ATTEMPTS = 5
BASE_DELAY = 0.5
# How many pending rows one catch-up re-delivers; the sweeper covers anything beyond.
CATCH_UP_LIMIT = 500

# The pending rows of one kind, oldest first, as the trigger would have sent them.
PENDING_RECORDS = sql.SQL("""
SELECT to_jsonb(p) FROM public.{table} p
 WHERE p.id IN (SELECT (lost ->> 'id')::uuid
                  FROM jsonb_array_elements(public.planbus_find_lost_requests({kind}, 0, %s)) AS lost)
 ORDER BY p.created_at
""")


def insert_payload(table: str, record: dict[str, Any]) -> dict[str, Any]:
    """The Supabase database-webhook body for an INSERT on public.<table>."""
    return {
        "type": "INSERT",
        "table": table,
        "schema": "public",
        "record": record,
        "old_record": None,
    }


class WebhookRelay:
    """Forwards `planbus_events` notifications to the webhook of the table each names, with retries;
    counts what it did. `targets` maps a request table to its webhook URL."""

    def __init__(
        self,
        database_url: str,
        targets: Mapping[str, str],
        secret: str,
        *,
        console: Console,
        attempts: int = ATTEMPTS,
        base_delay: float = BASE_DELAY,
        timeout: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        self.targets = dict(targets)
        self.database_url = database_url
        self.console = console
        self.attempts = attempts
        self.base_delay = base_delay
        self.delivered = 0
        self.given_up = 0
        self.answers: dict[str, str] = {}  # request id -> the outcome its webhook last answered
        self._headers = {"Content-Type": "application/json", "X-Webhook-Secret": secret}
        self._client = httpx.Client(timeout=timeout)
        # Deliveries run side by side, as pg_net's background worker sends them: one slow LLM call must not
        # hold up every request behind it.
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="relay")
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self.listener = Listener(
            "relay", database_url, CHANNEL, console=console, on_notify=self._submit, on_connect=self._catch_up
        )

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self._stop.set()
        self.listener.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _catch_up(self, conn: Connection, first: bool) -> None:
        payloads = []
        for table in self.targets:
            kind = kind_for_table(table)
            if kind is None:
                continue
            query = PENDING_RECORDS.format(table=sql.Identifier(table), kind=sql.Literal(kind.name))
            payloads += [insert_payload(table, row[0]) for row in conn.execute(query, (CATCH_UP_LIMIT,))]
        if payloads:
            what = "pending before the relay started" if first else "pending after a reconnect"
            self.console.event("relay", "INFO", f"re-delivering {len(payloads)} request(s) {what}")
        for payload in payloads:
            self._submit(json.dumps(payload, default=str))

    def _submit(self, payload: str) -> None:
        if self._stop.is_set():
            return
        table = _table(payload)
        url = self.targets.get(table or "")
        if url is None:
            self.console.event("relay", "WARNING", f"no webhook for events on {table!r}: not delivered")
            return
        self._pool.submit(self._deliver, url, payload)

    def _deliver(self, url: str, payload: str) -> None:
        request_id = _request_id(payload)
        for attempt in range(1, self.attempts + 1):
            started = time.monotonic()
            try:
                response = self._client.post(url, content=payload, headers=self._headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                cause = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
            else:
                elapsed_ms = round((time.monotonic() - started) * 1000)
                if response.status_code < 500:
                    self._delivered(payload, request_id, response, elapsed_ms)
                    return
                problem = f"HTTP {response.status_code}"
                cause = "server_error"
            if attempt == self.attempts or self._stop.is_set():
                break
            delay = self.base_delay * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
            self.console.event(
                "relay",
                "WARNING",
                f"delivery failed ({problem}); retrying in {delay:.1f} s",
                request_id=request_id,
                attempt=attempt,
            )
            if self._stop.wait(delay):
                return
        with self._count_lock:
            self.given_up += 1
        self.console.event(
            "relay",
            "ERROR",
            f"gave up delivering after {attempt} attempt(s) ({problem}); "
            "the sweeper (reset_stale_requests) will process the row",
            request_id=request_id,
        )
        self._record(payload, cause, f"gave up after {attempt} attempt(s): {problem}")

    def _record(self, payload: str, outcome: str, detail: str) -> None:
        """Keep a failed delivery in webhook_deliveries; a database that cannot take it is only reported."""
        kind = kind_for_table(_table(payload) or "")
        request_id = _request_id(payload)
        if kind is None or request_id is None:
            return
        try:
            with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    "SELECT public.planbus_record_delivery(%s, %s, 'relay', %s, %s)",
                    (kind.name, request_id, outcome, detail),
                )
        except psycopg.Error as exc:
            self.console.event(
                "relay", "WARNING", f"delivery failure not recorded: {exc}".strip(), request_id=request_id
            )

    def _delivered(
        self, payload: str, request_id: str | None, response: httpx.Response, elapsed_ms: int
    ) -> None:
        with self._count_lock:
            self.delivered += 1
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code >= 400:
            # A 4xx is the function refusing the delivery (wrong secret, not a payload): retrying cannot help.
            self.console.event(
                "relay",
                "ERROR",
                f"webhook refused: HTTP {response.status_code}",
                request_id=request_id,
                answer=answer,
            )
            cause = "refused_401" if response.status_code == 401 else "client_error"
            self._record(payload, cause, f"HTTP {response.status_code}: {response.text[:200]}")
            return
        if request_id is not None and isinstance(answer.get("outcome"), str):
            with self._count_lock:
                self.answers[request_id] = answer["outcome"]
        self.console.event(
            "relay",
            "INFO",
            f"webhook delivered: {answer.get('outcome', response.status_code)}",
            request_id=request_id,
            ms=elapsed_ms,
            reason=answer.get("reason"),
        )


def _table(payload: str) -> str | None:
    try:
        table = json.loads(payload).get("table")
    except (ValueError, AttributeError):
        return None
    return table if isinstance(table, str) else None


def _request_id(payload: str) -> str | None:
    try:
        record = json.loads(payload).get("record") or {}
    except (ValueError, AttributeError):
        return None
    value = record.get("id") if isinstance(record, dict) else None
    return str(value) if value is not None else None
