"""The bare baseline: functions-framework functions with no planbus code at all.

    bare_worker   POST {"request_id": "<uuid>"} or a webhook payload {"record": {"id": "<uuid>"}}: claims
                  the row of bench.bare_requests with one UPDATE, completes it with another (the result is
                  the JSON in BARE_RESULT_FILE, a plan of the size planbus stores), answers
                  {"request_id", "outcome"}
    bare_hello    answers {"ok": true}: functions_framework alone, for cold starts

The connection pool is psycopg_pool's with the settings planbus's adapter uses (autocommit, no prepared
statements, at most 4 connections), minus planbus's check of every connection taken from the pool, so the
difference between this and planbus is planbus's own work.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import flask
import functions_framework

CLAIM = """
UPDATE bench.bare_requests
   SET status = 'processing', attempts = attempts + 1,
       lease_expires_at = now() + interval '180 seconds', updated_at = now()
 WHERE id = %s AND status = 'pending'
RETURNING attempts
"""
COMPLETE = """
UPDATE bench.bare_requests
   SET status = 'completed', result = %s::jsonb, lease_expires_at = NULL, updated_at = now()
 WHERE id = %s AND status = 'processing' AND attempts = %s
"""

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _resources() -> tuple[Any, str]:
    with _lock:
        if not _state:
            from psycopg_pool import ConnectionPool

            _state["pool"] = ConnectionPool(
                os.environ["DATABASE_URL"],
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True, "prepare_threshold": None},
                open=True,
            )
            with open(os.environ["BARE_RESULT_FILE"]) as result:
                _state["result"] = result.read()
        return _state["pool"], _state["result"]


@functions_framework.http
def bare_worker(request: flask.Request) -> tuple[dict[str, Any], int]:
    body = json.loads(request.get_data() or b"{}")
    request_id = body.get("request_id") or (body.get("record") or {}).get("id")
    if not request_id:
        return {"error": "no request id"}, 400
    pool, result = _resources()
    with pool.connection() as conn:
        claimed = conn.execute(CLAIM, (request_id,)).fetchone()
        if claimed is None:
            return {"request_id": request_id, "outcome": "skipped"}, 200
    with pool.connection() as conn:
        done = conn.execute(COMPLETE, (result, request_id, claimed[0]))
    outcome = "completed" if done.rowcount == 1 else "skipped"
    return {"request_id": request_id, "outcome": outcome}, 200


@functions_framework.http
def bare_hello(request: flask.Request) -> tuple[dict[str, Any], int]:
    return {"ok": True}, 200
