"""The database port over supabase-py: `rpc` calls through PostgREST with the service-role key.

PostgREST reports a failure as `{code, message, details, hint}`, which supabase-py raises as
`postgrest.exceptions.APIError`. The code says what happened:
- PGRST000-PGRST003: PostgREST cannot reach the database or get a connection: the database is unavailable;
- a SQLSTATE: translated exactly as the direct adapter translates it (23505 is a UniqueViolation, ...);
- anything else (no code, another PGRST code, a gateway's error page): the HTTP status decides, a 5xx being
  an outage. supabase-py drops the status, so a response hook remembers it per thread.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import httpx

from planbus.db import translate_error
from planbus.errors import DatabaseError, DatabaseUnavailable

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
# PostgREST's own codes for "the database is not reachable" (could not connect, internal connection
# error, schema cache not loadable, no pool connection within the timeout).
_UNREACHABLE_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})


class SupabaseDatabase:
    """Calls planbus SQL functions as `POST {url}/rest/v1/rpc/{function}`."""

    def __init__(self, url: str, service_role_key: str, *, timeout: float = 10.0) -> None:
        # Imported here: supabase costs about a second at import and most runs never need it.
        from supabase import ClientOptions, create_client

        self._last_status = threading.local()
        # Our own HTTP client carries the timeout (supabase-py deprecates its own option) and the hook.
        self._http = httpx.Client(timeout=timeout, event_hooks={"response": [self._remember_status]})
        self._client = create_client(url, service_role_key, options=ClientOptions(httpx_client=self._http))

    def call(self, function: str, /, **params: Any) -> Any:
        """POST the named arguments to `rpc/<function>`; return the decoded JSON answer (None for null)."""
        from postgrest.exceptions import APIError

        if not _NAME.match(function) or not all(_NAME.match(name) for name in params):
            raise ValueError(f"not a SQL identifier: {function}({', '.join(params)})")
        body = json.loads(json.dumps(params, default=str))
        self._last_status.value = None
        try:
            response = self._client.rpc(function, body).execute()
        except APIError as exc:
            raise translate(exc.code, exc.message or str(exc), self._last_status.value) from exc
        except httpx.TransportError as exc:
            raise DatabaseUnavailable(f"Supabase unreachable: {exc}") from exc
        return response.data

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _remember_status(self, response: httpx.Response) -> None:
        self._last_status.value = response.status_code


def translate(code: str | None, message: str, status: int | None) -> DatabaseError:
    """The planbus exception for a PostgREST error code and the HTTP status it came with."""
    if code in _UNREACHABLE_CODES:
        return DatabaseUnavailable(f"database unavailable ({code}): {message}", sqlstate=code)
    if code is not None and _SQLSTATE.match(code):
        return translate_error(message, code)
    if status is None and code is not None and code.isdigit() and len(code) == 3:
        status = int(code)  # supabase-py puts the status there when the body was not PostgREST's JSON
    label = f"Supabase answered HTTP {status}" + (f" ({code})" if code else "")
    if status is not None and status >= 500:
        return DatabaseUnavailable(f"{label}: {message}")
    return DatabaseError(f"{label}: {message}", sqlstate=None)
