"""The exceptions planbus raises; foreign errors are translated at the adapter edges.

The tree, and what an HTTP entry point answers for each:

- PlanbusError
  - ConfigurationError: a setting is missing or inconsistent (503, the function cannot serve)
  - DatabaseError: the database refused a statement; carries the SQLSTATE (500)
    - DatabaseUnavailable: the database could not be reached or dropped the connection (503)
    - UniqueViolation: 23505, e.g. a second active request for one lead
    - LimitExceeded: PT429, a user's daily plan-request limit
  - GenerationError: the LLM gave no valid plan; `retryable` for timeouts, 429 and 5xx, with `retry_after`
    when the provider said when to come back (written to the row)
  - DeliveryError: Telegram did not take a message; `permanent` or `retry_after` (written to the reminder)
"""

from __future__ import annotations


class PlanbusError(Exception):
    """Base of every error planbus raises on purpose."""


class ConfigurationError(PlanbusError):
    """A setting is missing or inconsistent."""


class DatabaseError(PlanbusError):
    """The database refused a statement."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or dropped the connection."""


class UniqueViolation(DatabaseError):
    """A unique constraint refused the row (SQLSTATE 23505)."""


class LimitExceeded(DatabaseError):
    """A configured quota refused the row (SQLSTATE PT429)."""


class GenerationError(PlanbusError):
    """The plan generator failed; `retryable` says whether another attempt may succeed.

    `retry_after` is how many seconds the provider asked to wait before the next attempt (its Retry-After,
    capped at an hour), or None when it did not say: the next attempt should come no earlier.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class DeliveryError(PlanbusError):
    """Telegram refused or could not take a message."""

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


SQLSTATE_ERRORS: dict[str, type[DatabaseError]] = {
    "23505": UniqueViolation,
    "PT429": LimitExceeded,
}


def database_error(message: str, sqlstate: str | None) -> DatabaseError:
    """Build the planbus exception that matches a SQLSTATE."""
    return SQLSTATE_ERRORS.get(sqlstate or "", DatabaseError)(message, sqlstate=sqlstate)
