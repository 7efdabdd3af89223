"""A cold start pays only for what its target uses: importing main.py loads none of the heavy libraries
(openai, supabase, PyJWT, cryptography, httpx, psycopg, Cloud Tasks, gRPC) and none of pydantic, the
settings, the models or a request kind; a target's first request loads only the heavy libraries its work
needs, and only the request kinds it serves. Each case runs in a fresh interpreter
(support/first_requests.py); the time it takes is measured by tests/bench/bench_cold_start.py
(`make bench ARGS="--only cold_start"`), not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from support.first_requests import FIRST_REQUESTS, ROOT, Sql, cold_start, due_reminder, targets


@pytest.mark.parametrize("target", targets())
def test_importing_main_loads_no_heavy_library_and_the_first_request_only_what_the_target_uses(
    target: str, database_url: str, sql: Sql
) -> None:
    arrange = FIRST_REQUESTS.get(target)
    request = arrange(sql) if arrange else None
    start = cold_start(target, database_url, request)
    assert start.after_import == set()
    assert start.deferred_at_import == set()
    assert request is not None, (
        f"support/first_requests.py has no first request for {target}: add the request that does its work "
        "and the heavy libraries that work needs"
    )
    assert start.status == 200, start.answer
    answer = json.loads(start.answer)
    assert {key: answer.get(key) for key in request.answer} == request.answer
    assert start.after_request == request.uses
    assert start.kinds == request.kinds


def test_sending_a_reminder_to_telegram_is_what_loads_httpx(database_url: str, sql: Sql) -> None:
    with_token = replace(
        due_reminder(sql),
        env={"TELEGRAM_BOT_TOKEN": "123456:cold-start-token", "TELEGRAM_API_BASE": "http://127.0.0.1:9"},
    )
    start = cold_start("send_due_reminders", database_url, with_token)
    assert start.status == 200
    # Nothing listens there: the reminder waits for a retry, after a real attempt over httpx.
    assert json.loads(start.answer)["retried"] == 1
    assert start.after_request == {"psycopg", "httpx"}


def test_choosing_the_offline_generator_does_not_import_openai() -> None:
    probe = (
        "import sys, uuid, datetime\n"
        "from planbus.llm import make_generator\n"
        "from planbus.models import LeadFacts\n"
        "from planbus.settings import Settings\n"
        "generator = make_generator(Settings())\n"
        "generator.generate(LeadFacts(id=uuid.uuid4(), full_name='Ada'), today=datetime.date.today())\n"
        "print('openai' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no OPENAI_API_KEY from the outside world
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    assert done.stdout.strip() == "False"
