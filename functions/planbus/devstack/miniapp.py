"""The Mini App's side of the flow, over SQL instead of PostgREST but with exactly its privileges.

PostgREST runs each request in a transaction as role `authenticated` with the JWT claims in
`request.jwt.claims`; `MiniApp` does the same (`SET LOCAL ROLE` + `set_config(..., true)`), so every read and
write below goes through the Row Level Security policies of contract section 4. The connecting user must
be allowed to `SET ROLE authenticated` (the database owner or a superuser is).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from planbus.db.postgres import translate
from planbus.errors import DatabaseError
from planbus.kinds import KINDS

DictConnection = psycopg.Connection[dict[str, Any]]


@dataclass(frozen=True)
class MiniAppUser:
    """A signed-in Telegram user: the `sub` of their token and their Telegram id."""

    user_id: uuid.UUID
    telegram_id: int

    @property
    def claims(self) -> dict[str, Any]:
        """The JWT claims `telegram_auth` issues, as PostgREST would pass them to the database."""
        return {
            "sub": str(self.user_id),
            "role": "authenticated",
            "aud": "authenticated",
            "telegram_id": self.telegram_id,
        }


class MiniApp:
    """Insert and poll plan and draft requests, and read reminders, as one signed-in user."""

    def __init__(self, database_url: str, user: MiniAppUser) -> None:
        self.database_url = database_url
        self.user = user

    @contextmanager
    def _as_user(self) -> Iterator[DictConnection]:
        try:
            with (
                psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=10) as conn,
                conn.transaction(),
            ):
                conn.execute("SET LOCAL ROLE authenticated")
                conn.execute(
                    "SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(self.user.claims),)
                )
                yield conn
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def request_plan(self, lead_id: uuid.UUID | str) -> uuid.UUID:
        """Insert `{lead_id, telegram_id}` into plan_requests and return the new row's id."""
        with self._as_user() as conn:
            row = conn.execute(
                "INSERT INTO public.plan_requests (lead_id, telegram_id) VALUES (%s, %s) RETURNING id",
                (lead_id, self.user.telegram_id),
            ).fetchone()
        if row is None:
            raise DatabaseError("the insert returned no row")
        request_id: uuid.UUID = row["id"]
        return request_id

    def request_draft(self, lead_id: uuid.UUID | str, step_index: int) -> uuid.UUID:
        """Insert `{lead_id, telegram_id, step_index}` into draft_requests: a message for that step (0-based)
        of the lead's current plan; returns the new row's id."""
        with self._as_user() as conn:
            row = conn.execute(
                "INSERT INTO public.draft_requests (lead_id, telegram_id, step_index) "
                "VALUES (%s, %s, %s) RETURNING id",
                (lead_id, self.user.telegram_id, step_index),
            ).fetchone()
        if row is None:
            raise DatabaseError("the insert returned no row")
        request_id: uuid.UUID = row["id"]
        return request_id

    def get_request(self, request_id: uuid.UUID | str, table: str = "plan_requests") -> dict[str, Any] | None:
        """The row as the Mini App polls it from a kind's table (only the user's own rows are visible)."""
        if table not in {kind.table for kind in KINDS}:
            raise ValueError(f"{table!r} is not a request table")
        with self._as_user() as conn:
            return conn.execute(
                sql.SQL(
                    "SELECT id, lead_id, status, result, error, attempts, created_at, updated_at "
                    "FROM public.{} WHERE id = %s"
                ).format(sql.Identifier(table)),
                (request_id,),
            ).fetchone()

    def reminders(self, request_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """The reminders a completed request scheduled, in step order."""
        with self._as_user() as conn:
            return conn.execute(
                "SELECT id, step_index, due_at, text, status, sent_at, delivered_via "
                "FROM public.reminders WHERE plan_request_id = %s ORDER BY step_index",
                (request_id,),
            ).fetchall()
