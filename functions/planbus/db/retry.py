"""A bounded retry for database calls that are safe to repeat, for either adapter.

Every state transition is a SQL function fenced on the caller's claim (its attempt number, its lease), so
calling one again after DatabaseUnavailable is safe: if the first call did commit before the connection
dropped, the repeat is refused by the fence and changes nothing. A use case opts in for the calls whose
loss is expensive, such as writing a plan that took a minute of LLM time:

    answer = call_with_retry(db, "planbus_complete_request", retry_for=lease_left, p_request_id=..., ...)

Tries follow each other after 0.1 s, 0.2 s, 0.4 s, ... at most RETRY_MAX_DELAY_SECONDS apart, for
`retry_for` seconds; a try while the direct adapter knows the database is down fails at once (see
planbus.db.pool), so a retry costs nothing until the database can answer, and lands within about a second
of its return. Any other error is raised at once: only an unreachable database is worth waiting for.
"""

from __future__ import annotations

import time
from typing import Any

from planbus import logs
from planbus.db import Database
from planbus.errors import DatabaseUnavailable

RETRY_FIRST_DELAY_SECONDS = 0.1
RETRY_MAX_DELAY_SECONDS = 1.0

log = logs.get_logger("db")


def call_with_retry(db: Database, function: str, /, *, retry_for: float, **params: Any) -> Any:
    """`db.call(function, **params)`, tried again while the database is unavailable, for up to `retry_for`
    seconds; then the last DatabaseUnavailable is raised, saying how long it was tried."""
    started = time.monotonic()
    deadline = started + max(retry_for, 0.0)
    delay = RETRY_FIRST_DELAY_SECONDS
    tries = 0
    while True:
        tries += 1
        try:
            answer = db.call(function, **params)
        except DatabaseUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                if tries == 1:
                    raise
                raise DatabaseUnavailable(
                    f"{exc} (gave up after {tries} tries over {time.monotonic() - started:.1f} s)",
                    sqlstate=exc.sqlstate,
                ) from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_DELAY_SECONDS)
            continue
        if tries > 1:
            log.info("%s succeeded after %s tries over %.1f s", function, tries, time.monotonic() - started)
        return answer
