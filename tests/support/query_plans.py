"""The plans PostgreSQL chose for a statement and for every statement it runs inside (auto_explain)."""

from __future__ import annotations

from typing import Any

import psycopg


def nested_plans(conn: psycopg.Connection[Any], statement: str) -> list[str]:
    """The plans of `statement` and of every statement it runs (auto_explain), in a rolled-back
    transaction."""
    plans: list[str] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "LOG" and diagnostic.message_primary:
            plans.append(diagnostic.message_primary)

    conn.add_notice_handler(collect)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("LOAD 'auto_explain'")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_analyze = on",
                "auto_explain.log_nested_statements = on",
                "client_min_messages = log",
            ):
                conn.execute(f"SET LOCAL {setting}")
            conn.execute(statement)
            conn.execute("SET LOCAL client_min_messages = notice")
    finally:
        conn.remove_notice_handler(collect)
    return plans
