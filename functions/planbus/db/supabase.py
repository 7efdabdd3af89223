"""The database port over supabase-py: `rpc` calls through PostgREST with the service-role key."""

from __future__ import annotations

import json
from typing import Any

import httpx

from planbus.errors import DatabaseUnavailable, database_error


class SupabaseDatabase:
    """Calls planbus SQL functions as `POST {url}/rest/v1/rpc/{function}`."""

    def __init__(self, url: str, service_role_key: str, *, timeout: float = 10.0) -> None:
        # Imported here: supabase costs about a second at import and most runs never need it.
        from supabase import ClientOptions, create_client

        self._client = create_client(
            url, service_role_key, options=ClientOptions(postgrest_client_timeout=timeout)
        )

    def call(self, function: str, /, **params: Any) -> Any:
        from postgrest.exceptions import APIError

        body = json.loads(json.dumps(params, default=str))
        try:
            response = self._client.rpc(function, body).execute()
        except APIError as exc:
            raise database_error(exc.message or str(exc), exc.code) from exc
        except httpx.TransportError as exc:
            raise DatabaseUnavailable(f"Supabase unreachable: {exc}") from exc
        return response.data

    def close(self) -> None:
        self._client.postgrest.session.close()
