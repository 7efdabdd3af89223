"""The plans PostgreSQL chose for statements and for every statement they run inside (auto_explain)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def nested_plans(
    conn: psycopg.Connection[Any], statements: str | Sequence[str], *, detailed: bool = False
) -> list[str]:
    """The plans of `statements` and of every statement they run (auto_explain, with ANALYZE), in one
    rolled-back transaction; `detailed` adds buffers, timings and triggers."""
    plans: list[str] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "LOG" and diagnostic.message_primary:
            plans.append(diagnostic.message_primary)

    settings = ["auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on"]
    if detailed:
        settings += [
            "auto_explain.log_buffers = on",
            "auto_explain.log_timing = on",
            "auto_explain.log_triggers = on",
        ]
    settings += ["auto_explain.log_nested_statements = on", "client_min_messages = log"]
    conn.add_notice_handler(collect)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("LOAD 'auto_explain'")
            for setting in settings:
                conn.execute(f"SET LOCAL {setting}")
            for statement in [statements] if isinstance(statements, str) else statements:
                conn.execute(statement)
            conn.execute("SET LOCAL client_min_messages = notice")
    finally:
        conn.remove_notice_handler(collect)
    return plans
