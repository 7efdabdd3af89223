"""Timing on the database server itself, so client round trips and Python stay out of SQL figures.

Installed into a scratch database's `bench` schema (never into a database the benchmark did not create):

    bench.time_transactions(statements, commits)   each group of statements up to a commit is one
                                                   transaction, timed with clock_timestamp() from its first
                                                   statement to its COMMIT (work) and to the end of the
                                                   COMMIT (total: with the WAL flush, when fsync is on)
    bench.time_rolled_back(statements, rounds)     the statements run `rounds` times, each round in a
                                                   subtransaction rolled back afterwards, so a claim or a
                                                   scan finds the same rows every round
    bench.transitions                              every status change of the tables `watch_transitions`
                                                   is given, with clock_timestamp(): when a row was claimed
                                                   and when it was completed, as the server saw it

`explain_nested` captures EXPLAIN (ANALYZE, BUFFERS) of every statement, nested ones inside PL/pgSQL
functions included, through auto_explain's LOG messages sent to this client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from support.query_plans import nested_plans

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS bench;

CREATE OR REPLACE PROCEDURE bench.time_transactions(
  statements text[], commits boolean[],
  INOUT work_ms float8[] DEFAULT '{}', INOUT total_ms float8[] DEFAULT '{}'
) LANGUAGE plpgsql AS $$
DECLARE
  started timestamptz;
  worked timestamptz;
BEGIN
  FOR i IN 1 .. coalesce(array_length(statements, 1), 0) LOOP
    IF started IS NULL THEN
      started := clock_timestamp();
    END IF;
    EXECUTE statements[i];
    IF commits[i] THEN
      worked := clock_timestamp();
      COMMIT;
      work_ms := work_ms || extract(epoch FROM worked - started)::float8 * 1000;
      total_ms := total_ms || extract(epoch FROM clock_timestamp() - started)::float8 * 1000;
      started := NULL;
    END IF;
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION bench.time_rolled_back(statements text[], rounds int) RETURNS float8[]
LANGUAGE plpgsql AS $$
DECLARE
  deltas float8[] := '{}';
  started timestamptz;
  finished timestamptz;
  statement text;
BEGIN
  FOR round IN 1 .. rounds LOOP
    BEGIN
      started := clock_timestamp();
      FOREACH statement IN ARRAY statements LOOP
        EXECUTE statement;
      END LOOP;
      finished := clock_timestamp();
      RAISE EXCEPTION USING ERRCODE = 'PB001';
    EXCEPTION WHEN SQLSTATE 'PB001' THEN
      deltas := deltas || extract(epoch FROM finished - started)::float8 * 1000;
    END;
  END LOOP;
  RETURN deltas;
END
$$;

CREATE TABLE IF NOT EXISTS bench.transitions (
  tbl    text NOT NULL,
  id     uuid NOT NULL,
  status text NOT NULL,
  at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS transitions_id ON bench.transitions (id);

CREATE OR REPLACE FUNCTION bench.record_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.transitions (tbl, id, status) VALUES (TG_TABLE_NAME, NEW.id, NEW.status);
  RETURN NULL;
END
$$;
"""


def install(conn: psycopg.Connection[Any]) -> None:
    """Create the bench schema, its procedures and its transitions table (idempotent)."""
    conn.execute(SCHEMA)


def watch_transitions(conn: psycopg.Connection[Any], table: str) -> None:
    """Record every status change of `table` (schema-qualified) in bench.transitions."""
    schema, _, name = table.rpartition(".")
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE TRIGGER zz_bench_transitions AFTER UPDATE OF status ON {} "
            "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
            "EXECUTE FUNCTION bench.record_transition()"
        ).format(sql.Identifier(schema or "public", name))
    )


@dataclass(frozen=True)
class Timings:
    """Server time (ms) of each transaction: its statements, and with its commit."""

    work: list[float]
    total: list[float]

    def __getitem__(self, part: slice) -> Timings:
        return Timings(self.work[part], self.total[part])


def time_transactions(conn: psycopg.Connection[Any], transactions: Sequence[Sequence[str]]) -> Timings:
    """Server time of each transaction, its statements run in order and then committed.

    `conn` must be in autocommit mode: the procedure commits between transactions.
    """
    statements = [statement for transaction in transactions for statement in transaction]
    commits = [i == len(t) - 1 for t in transactions for i in range(len(t))]
    row = conn.execute("CALL bench.time_transactions(%s, %s)", (statements, commits)).fetchone()
    assert row is not None
    return Timings(list(row[0]), list(row[1]))


def time_rolled_back(conn: psycopg.Connection[Any], statements: Sequence[str], rounds: int) -> list[float]:
    """Server time (ms) of `statements` in each of `rounds` rolled-back rounds."""
    row = conn.execute("SELECT bench.time_rolled_back(%s, %s)", (list(statements), rounds)).fetchone()
    assert row is not None
    return list(row[0])


def explain_nested(conn: psycopg.Connection[Any], statements: Sequence[str]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of `statements` and of every statement they run, in one rolled-back
    transaction; the plans as auto_explain prints them."""
    return "\n\n".join(nested_plans(conn, statements, detailed=True))
