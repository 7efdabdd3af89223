"""`planbus migrate`: apply pending migrations to DATABASE_URL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from planbus.errors import ConfigurationError
from planbus.migrate import default_migrations_dir, migrate
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("migrate", help="apply pending migrations to DATABASE_URL")
    parser.add_argument(
        "--dir", type=Path, default=None, help="migrations folder (default: the repository's)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    url = get_settings().database_url
    if not url:
        raise ConfigurationError("DATABASE_URL is not set: migrations need a direct PostgreSQL connection")
    folder = args.dir or default_migrations_dir()
    applied = migrate(url, folder)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database is up to date")
    return 0
