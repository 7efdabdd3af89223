"""`planbus migrate`: apply migrations/NNNN_name.sql in order, each in its own transaction.

Applied files are recorded with a SHA-256 checksum in planbus_private.schema_migrations; a recorded file
whose text has changed stops the run before anything is applied. A session advisory lock serialises
concurrent runs (two deploys at once), and a run with nothing pending changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from planbus.db.postgres import translate
from planbus.errors import ConfigurationError

MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any fixed 64-bit key; chosen once, never changed, shared by every planbus release.
ADVISORY_LOCK_KEY = 0x706C616E627573

BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS planbus_private;
CREATE TABLE IF NOT EXISTS planbus_private.schema_migrations (
  name       text PRIMARY KEY,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def default_migrations_dir() -> Path:
    """The repository's migrations/ folder (functions/planbus/ -> ../../migrations)."""
    return Path(__file__).resolve().parents[2] / "migrations"


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    """Every migration file in order; anything else in the folder is an error, not silently skipped."""
    if not directory.is_dir():
        raise ConfigurationError(f"no migrations folder at {directory}")
    migrations = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        if not MIGRATION_FILE.match(path.name):
            raise ConfigurationError(f"migration file name must be NNNN_name.sql: {path.name}")
        migrations.append(Migration(path.name, path.read_text(encoding="utf-8")))
    numbers = [m.name[:4] for m in migrations]
    if len(set(numbers)) != len(numbers):
        raise ConfigurationError(f"two migrations share a number in {directory}")
    return migrations


def migrate(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when already up to date)."""
    migrations = load_migrations(directory or default_migrations_dir())
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
            # A session lock: a second run waits here; the server releases it if this connection drops.
            conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            try:
                return _apply(conn, migrations)
            finally:
                if not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    except psycopg.OperationalError as exc:
        raise translate(exc) from exc


def _apply(conn: psycopg.Connection[tuple[object, ...]], migrations: list[Migration]) -> list[str]:
    with conn.transaction():
        conn.execute(BOOTSTRAP)
    applied: dict[str, str] = {
        str(name): str(checksum)
        for name, checksum in conn.execute("SELECT name, checksum FROM planbus_private.schema_migrations")
    }
    known = {m.name for m in migrations}
    for name in applied:
        if name not in known:
            raise ConfigurationError(f"migration {name} is applied but missing from the migrations folder")
    for migration in migrations:
        if migration.name in applied and applied[migration.name] != migration.checksum:
            raise ConfigurationError(
                f"migration {migration.name} changed after it was applied; add a new migration instead"
            )
    done = []
    for migration in migrations:
        if migration.name in applied:
            continue
        try:
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO planbus_private.schema_migrations (name, checksum) VALUES (%s, %s)",
                    (migration.name, migration.checksum),
                )
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
                raise  # the connection is gone: reported as unavailable above
            raise translate(exc, migration.name) from exc
        done.append(migration.name)
    return done
