"""A functions-framework source that serves another source's target with per-request timing.

    BENCH_SOURCE=functions/main.py BENCH_TARGET=handle_plan_request [BENCH_PROFILE=1] \
        functions-framework --source tests/bench/profiled_main.py --target profiled

Every request is timed inside the server: the target's own wall time, and the part of it spent in
psycopg's Cursor.execute (the SQL round trips, as the client waits for them) with the statements sent.
With BENCH_PROFILE=1 each request also runs under cProfile (serial requests only: a profile is per
thread). `GET /?reset` forgets what was collected (after a warm-up), `GET /?dump` answers it as JSON.
The framework's own time is the client's round trip minus the target's.
"""

from __future__ import annotations

import cProfile
import importlib.util
import os
import pstats
import threading
import time
from collections import defaultdict
from typing import Any

import flask
import functions_framework
import psycopg

_spec = importlib.util.spec_from_file_location("bench_profiled_source", os.environ["BENCH_SOURCE"])
assert _spec is not None and _spec.loader is not None
_source = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_source)
TARGET = getattr(_source, os.environ["BENCH_TARGET"])
PROFILE = os.environ.get("BENCH_PROFILE") == "1"

_lock = threading.Lock()
_local = threading.local()
_samples: list[tuple[float, float, int]] = []

_current = {"profiler": cProfile.Profile()}  # replaced on reset
_execute = psycopg.Cursor.execute


def _timed_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        return _execute(self, *args, **kwargs)
    finally:
        if getattr(_local, "active", False):
            _local.sql += time.perf_counter() - started
            _local.statements += 1


psycopg.Cursor.execute = _timed_execute  # type: ignore[method-assign]


def category(filename: str, function: str) -> str:
    """Where a profiled function belongs, by the file it is in (or its name, for C functions)."""
    if filename == "~":
        if any(word in function for word in ("wait", "poll", "select", "recv", "send", "connect")):
            return "waiting on sockets (SQL round trips)"
        return "C functions (str, dict, json, ...)"
    if "psycopg" in filename and function in ("wait", "_wait", "wait_conn"):
        # psycopg blocks inside compiled code, which cProfile counts as its caller's own time.
        return "waiting on sockets (SQL round trips)"
    rules = (
        ("psycopg", "psycopg (client library)"),
        ("pydantic", "pydantic"),
        ("/logging/", "logging"),
        ("planbus/logs.py", "logging"),
        ("planbus/llm", "plan generation (offline)"),
        ("planbus/planning.py", "plan generation (offline)"),
        ("/planbus/", "planbus (other)"),
        ("functions/main.py", "planbus (other)"),
        ("flask", "flask / werkzeug"),
        ("werkzeug", "flask / werkzeug"),
        ("/json/", "json"),
    )
    for needle, name in rules:
        if needle in filename:
            return name
    return "other Python"


def _profile_summary() -> dict[str, Any]:
    stats = pstats.Stats(_current["profiler"]).stats  # type: ignore[attr-defined]
    categories: dict[str, float] = defaultdict(float)
    functions = []
    for (filename, line, function), (_cc, calls, own, cumulative, _callers) in stats.items():
        categories[category(filename, function)] += own
        where = "" if filename == "~" else f"{filename.split('site-packages/')[-1]}:{line} "
        functions.append(
            {"function": f"{where}{function}", "calls": calls, "own": own, "cumulative": cumulative}
        )
    functions.sort(key=lambda item: item["cumulative"], reverse=True)
    return {"categories": dict(categories), "functions": functions[:60]}


@functions_framework.http
def profiled(request: flask.Request) -> Any:
    if request.method == "GET" and "reset" in request.args:
        with _lock:
            _samples.clear()
            _current["profiler"] = cProfile.Profile()
        return {"reset": True}, 200
    if request.method == "GET" and "dump" in request.args:
        with _lock:
            answer: dict[str, Any] = {"samples": list(_samples)}
            if PROFILE:
                answer["profile"] = _profile_summary()
        return answer, 200
    _local.active, _local.sql, _local.statements = True, 0.0, 0
    started = time.perf_counter()
    profiler = _current["profiler"]
    if PROFILE:
        profiler.enable()
    try:
        return TARGET(request)
    finally:
        if PROFILE:
            profiler.disable()
        elapsed = time.perf_counter() - started
        _local.active = False
        with _lock:
            _samples.append((elapsed, _local.sql, _local.statements))
