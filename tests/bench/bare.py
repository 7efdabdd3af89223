"""The baselines planbus is measured against, written here with no planbus code.

    bench.bare_requests   a table of plan_requests' shape (its columns, defaults, checks, indexes and
                          storage options, by CREATE TABLE ... LIKE), with no trigger, no foreign key and
                          no row-level security
    BareRelay             LISTEN on the bare table's NOTIFY channel, POST each id to bare_main.bare_worker
    Poller                what planbus replaces: every 3 s, select the pending rows and claim and complete
                          each with the same two statements the bare function uses

The claim and complete statements are the bare function's own (bare_main.CLAIM and COMPLETE).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
from bare_main import CLAIM, COMPLETE
from psycopg import sql

TABLE = "bench.bare_requests"
CHANNEL = "bench_bare"
POLL_INTERVAL = 3.0


def create_table(conn: psycopg.Connection[Any], *, notify: bool = False) -> None:
    """bench.bare_requests in plan_requests' shape; with `notify`, an AFTER INSERT NOTIFY of the id."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    conn.execute("DROP TABLE IF EXISTS bench.bare_requests")
    conn.execute("CREATE TABLE bench.bare_requests (LIKE public.plan_requests INCLUDING ALL)")
    row = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'public.plan_requests'::regclass"
    ).fetchone()
    if row and row[0]:
        options = sql.SQL(", ").join(sql.SQL(option) for option in row[0])
        conn.execute(sql.SQL("ALTER TABLE bench.bare_requests SET ({})").format(options))
    conn.execute("GRANT INSERT, SELECT ON bench.bare_requests TO PUBLIC")
    conn.execute("GRANT USAGE ON SCHEMA bench TO PUBLIC")
    if notify:
        conn.execute(
            """
            CREATE OR REPLACE FUNCTION bench.bare_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM pg_notify('bench_bare', NEW.id::text);
              RETURN NULL;
            END
            $$;
            CREATE TRIGGER bare_notify AFTER INSERT ON bench.bare_requests
              FOR EACH ROW EXECUTE FUNCTION bench.bare_notify();
            """
        )


def claim_literal(request_id: str) -> str:
    """The bare claim as one self-contained statement (for server-side timing)."""
    return CLAIM.replace("%s", f"'{request_id}'")


def complete_literal(request_id: str, result: str, attempt: int = 1) -> str:
    text = COMPLETE.replace("%s::jsonb", quote(result) + "::jsonb", 1)
    return text.replace("%s", f"'{request_id}'", 1).replace("%s", str(attempt), 1)


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class BareRelay:
    """NOTIFY → POST, as small as it can be: a LISTEN thread and 8 sending threads, like planbus's relay."""

    def __init__(self, database_url: str, target_url: str, *, concurrency: int = 8) -> None:
        self.database_url = database_url
        self.target_url = target_url
        self.failures = 0
        self._client = httpx.Client(timeout=30)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bare-relay")
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="bare-relay", daemon=True)

    def __enter__(self) -> BareRelay:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the bare relay could not LISTEN")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        self._client.close()

    def _listen(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            while not self._stop.is_set():
                for notification in conn.notifies(timeout=0.2):
                    self._pool.submit(self._post, notification.payload)

    def _post(self, request_id: str) -> None:
        try:
            response = self._client.post(self.target_url, content=json.dumps({"request_id": request_id}))
            response.raise_for_status()
        except httpx.HTTPError:
            self.failures += 1


class Poller:
    """Every `interval` seconds: the pending rows, each claimed and completed in turn."""

    def __init__(self, database_url: str, result: str, *, interval: float = POLL_INTERVAL) -> None:
        self.database_url = database_url
        self.result = result
        self.interval = interval
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 30)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True, prepare_threshold=None) as conn:
            while not self._stop.wait(self.interval):
                self.polls += 1
                pending = conn.execute(
                    "SELECT id FROM bench.bare_requests WHERE status = 'pending' ORDER BY created_at"
                ).fetchall()
                for (request_id,) in pending:
                    claimed = conn.execute(CLAIM, (request_id,)).fetchone()
                    if claimed is not None:
                        conn.execute(COMPLETE, (self.result, request_id, claimed[0]))
