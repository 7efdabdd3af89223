"""The real server's output while its database is unreachable: every line on stdout and stderr is one JSON
object with a severity, each failure logged once, with and without functions-framework's execution ids."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from planbus.devstack.supervisor import free_port
from support.function_server import function_server

pytestmark = pytest.mark.e2e

SECRET = "json-log-stream-secret"
SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.parametrize("execution_ids", [False, True], ids=["plain", "LOG_EXECUTION_ID"])
def test_every_line_the_server_writes_is_json_with_a_severity(execution_ids: bool) -> None:
    env = {
        "WEBHOOK_SECRET": SECRET,
        "PLAN_GENERATOR": "offline",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/planbus",
        "LOG_EXECUTION_ID": "true" if execution_ids else "false",
    }
    with function_server("handle_plan_request", env) as server:
        for _ in range(5):
            body = {
                "type": "INSERT",
                "table": "plan_requests",
                "schema": "public",
                "record": {"id": str(uuid.uuid4())},
            }
            response = httpx.post(server.url, json=body, headers={"X-Webhook-Secret": SECRET}, timeout=10)
            assert response.status_code == 503
        lines = server.stdout_lines() + server.stderr_lines()

    entries = []
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    assert entries, "the server wrote nothing"
    assert all(entry.get("severity") in SEVERITIES for entry in entries), entries
    unavailable = [e for e in entries if e["message"].startswith("database unavailable")]
    assert len(unavailable) == 5, entries
    assert {e["severity"] for e in unavailable} == {"ERROR"}
    if execution_ids:
        assert all("execution_id" in e.get("logging.googleapis.com/labels", {}) for e in unavailable)
