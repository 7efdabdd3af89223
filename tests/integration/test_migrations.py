"""planbus migrate: ordered, recorded, idempotent, refuses changed files, safe under concurrency."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from planbus.errors import ConfigurationError, DatabaseError, DatabaseUnavailable
from planbus.migrate import ADVISORY_LOCK_KEY, default_migrations_dir, load_migrations, migrate
from support.concurrency import run_together


def test_migrations_apply_to_an_empty_database_in_order(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    applied = migrate(url)
    names = [m.name for m in load_migrations(default_migrations_dir())]
    assert applied == names
    with psycopg.connect(url) as conn:
        recorded = [
            r[0] for r in conn.execute("SELECT name FROM planbus_private.schema_migrations ORDER BY name")
        ]
    assert recorded == names


def test_a_second_run_is_a_no_op(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    migrate(url)
    assert migrate(url) == []


def test_a_changed_applied_file_is_refused(fresh_database: Callable[..., str], tmp_path: Path) -> None:
    url = fresh_database()
    folder = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), folder)
    migrate(url, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    (folder / "9999_later.sql").write_text("CREATE TABLE later (id int);")
    with pytest.raises(ConfigurationError, match="changed after it was applied"):
        migrate(url, folder)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('public.later')").fetchone() == (None,)


def test_a_failing_migration_leaves_nothing_behind(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    url = fresh_database()
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (folder / "0002_broken.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    with pytest.raises(DatabaseError, match=r"0002_broken\.sql: division by zero"):
        migrate(url, folder)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('public.half')").fetchone() == (None,)
        names = [r[0] for r in conn.execute("SELECT name FROM planbus_private.schema_migrations")]
    assert names == ["0001_ok.sql"]


def test_two_concurrent_runs_do_not_collide(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    results = run_together([lambda: migrate(url)] * 2)
    names = [m.name for m in load_migrations(default_migrations_dir())]
    assert sorted(results, key=len) == [[], names]


def test_a_badly_named_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigurationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_an_applied_migration_missing_from_the_folder_is_refused(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    url = fresh_database()
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    (folder / "0002_second.sql").write_text("CREATE TABLE second (id int);")
    migrate(url, folder)
    (folder / "0002_second.sql").unlink()
    with pytest.raises(ConfigurationError, match=r"0002_second\.sql is applied but missing"):
        migrate(url, folder)


def test_two_files_with_one_number_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigurationError, match="share a number"):
        load_migrations(tmp_path)


def test_an_unreachable_database_is_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable, match="database unreachable"):
        migrate("postgresql://postgres@127.0.0.1:1/planbus")


def test_a_second_run_waits_for_the_first_instead_of_applying_twice(
    fresh_database: Callable[..., str],
) -> None:
    url = fresh_database()
    finished: list[list[str]] = []
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        waiting = threading.Thread(target=lambda: finished.append(migrate(url)))
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive() and finished == []  # blocked behind the lock another deploy holds
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    waiting.join(timeout=60)
    assert finished == [[m.name for m in load_migrations(default_migrations_dir())]]
