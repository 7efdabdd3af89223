"""Every log line is one JSON object with Cloud Logging's severity: planbus's, and every library's, whether
its records propagate to the root logger or go to a console handler of its own."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from planbus import logs

# What psycopg_pool logs when it cannot connect: two lines of text in one record.
POOL_WARNING = (
    "error connecting in 'pool-1': connection failed: connection to server at \"127.0.0.1\", port 5432 "
    "failed: server closed the connection unexpectedly\n\tThis probably means the server terminated "
    "abnormally\n\tbefore or while processing the request."
)


def entries(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as JSON; fails on the first line that is not a JSON object."""
    parsed = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


@contextmanager
def library_with_its_own_handler() -> Iterator[logging.Logger]:
    """A logger that, like gunicorn's `gunicorn.error`, prints to stderr through a handler of its own."""
    logger = logging.getLogger("planbus_test.own_handler")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)


def test_every_librarys_records_come_out_as_json_lines_with_their_severity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # pytest resets the warnings module around every test: start warnings capture afresh, as a process does.
    logging.captureWarnings(False)
    with library_with_its_own_handler() as own_handler:
        logs.configure("INFO")
        log_from_everywhere(own_handler)

    captured = capsys.readouterr()
    out, err = entries(captured.out), entries(captured.err)
    assert [(e["logger"], e["severity"]) for e in out] == [
        ("psycopg_pool", "WARNING"),
        ("psycopg", "ERROR"),
        ("werkzeug", "ERROR"),
        ("root", "WARNING"),
        ("planbus.test", "INFO"),
        ("py.warnings", "WARNING"),
    ]
    assert out[0]["message"] == POOL_WARNING
    assert "ConnectionResetError: peer went away" in out[2]["exception"]
    assert out[4]["request_id"] == "r-1"
    assert "a library's deprecation" in out[5]["message"]
    assert [(e["logger"], e["severity"], e["message"]) for e in err] == [
        ("planbus_test.own_handler", "CRITICAL", "worker timeout")
    ]


def log_from_everywhere(own_handler: logging.Logger) -> None:
    logging.getLogger("psycopg_pool").warning(POOL_WARNING)
    logging.getLogger("psycopg").error("error ignored in rollback on %s", "conn-1")
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("werkzeug").exception("Exception on / [POST]")
    logging.warning("straight on the root logger")
    logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org (below the root's level)")
    logs.get_logger("test").info("planbus at INFO", extra={"fields": {"request_id": "r-1"}})
    own_handler.critical("worker timeout")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)


def test_configure_is_idempotent_and_never_doubles_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        logs.configure("INFO")
    logging.getLogger("psycopg_pool").warning("once")
    assert len(entries(capsys.readouterr().out)) == 1


def test_a_console_handler_already_on_the_root_logger_is_used_rather_than_doubled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What functions-framework installs when LOG_EXECUTION_ID is set: a plain handler on the root logger.
    root = logging.getLogger()
    theirs = logging.StreamHandler(sys.stdout)
    ours = [h for h in root.handlers if isinstance(h, logs._StdoutHandler)]
    for handler in ours:
        root.removeHandler(handler)
    root.addHandler(theirs)
    try:
        logs.configure("INFO")
        logging.getLogger("psycopg_pool").warning("through their handler")
    finally:
        root.removeHandler(theirs)
        for handler in ours:
            root.addHandler(handler)
    (entry,) = entries(capsys.readouterr().out)
    assert (entry["severity"], entry["message"]) == ("WARNING", "through their handler")


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (50, "CRITICAL"),
        (45, "ERROR"),
        (40, "ERROR"),
        (30, "WARNING"),
        (25, "INFO"),
        (10, "DEBUG"),
        (5, "DEFAULT"),
    ],
)
def test_python_levels_map_to_cloud_logging_severities(level: int, severity: str) -> None:
    assert logs.severity(level) == severity
