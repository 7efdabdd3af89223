"""`planbus configure`: the steps of ./deploy.sh that run locally or in the database.

planbus configure check --infra DIR [--env-vars-dir DIR]   < NAME=value pairs, NUL-separated
    check the env file's values (given on stdin, so secrets never reach argv) against the settings
    and infra/; write each function's plain environment variables as DIR/<target>.json
planbus configure webhook --url URL [--channel NAME]
    store the webhook URL and WEBHOOK_SECRET in DATABASE_URL's database for the trigger
planbus configure cron --job NAME --function TARGET --url URL --schedule CRON --body JSON --timeout S
    create or replace a Supabase Cron (pg_cron) job calling a function with the secret
planbus configure unschedule --job NAME
    remove a pg_cron job of that name, if there is one
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from planbus.errors import ConfigurationError
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("configure", help="deploy.sh's local and database steps")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="check the deployment's configuration (values on stdin)")
    check.add_argument("--infra", type=Path, required=True, help="folder with functions.conf, schedules.conf")
    check.add_argument("--env-vars-dir", type=Path, help="write <target>.json environment files here")
    check.set_defaults(run=run_check)

    webhook = actions.add_parser("webhook", help="store the webhook URL and secret in the database")
    webhook.add_argument("--url", required=True, help="URL of the deployed handle_plan_request")
    webhook.add_argument("--channel", default="planbus", help="InsForge realtime channel (default planbus)")
    webhook.set_defaults(run=run_webhook)

    cron = actions.add_parser("cron", help="create or replace a Supabase Cron job")
    cron.add_argument("--job", required=True)
    cron.add_argument("--function", required=True, help="the target the job calls")
    cron.add_argument("--url", required=True, help="the function's URL")
    cron.add_argument("--schedule", required=True, help="five-field cron expression")
    cron.add_argument("--body", default="{}", help="JSON object posted")
    cron.add_argument("--timeout", type=int, default=60, help="seconds pg_net waits for the answer")
    cron.set_defaults(run=run_cron)

    unschedule = actions.add_parser("unschedule", help="remove a Supabase Cron job if present")
    unschedule.add_argument("--job", required=True)
    unschedule.set_defaults(run=run_unschedule)


def read_values(data: bytes) -> dict[str, str]:
    """NAME=value pairs separated by NUL bytes, as deploy.sh writes them."""
    values: dict[str, str] = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        name, sep, value = item.decode("utf-8").partition("=")
        if not sep or not name:
            raise ConfigurationError("expected NAME=value pairs separated by NUL bytes on stdin")
        values[name] = value
    return values


def run_check(args: argparse.Namespace) -> int:
    from planbus.deploy.config import check

    deployment = check(read_values(sys.stdin.buffer.read()), args.infra)
    if args.env_vars_dir is not None:
        args.env_vars_dir.mkdir(parents=True, exist_ok=True)
        for function in deployment.functions:
            path = args.env_vars_dir / f"{function.target}.json"
            path.write_text(json.dumps(deployment.environment(function), sort_keys=True) + "\n")
    print(
        f"configuration is valid: {len(deployment.functions)} functions, "
        f"{len(deployment.schedules)} schedules, plan generator {deployment.settings.generator}"
    )
    for warning in deployment.warnings():
        print(f"note: {warning}")
    return 0


def _database_and_secret() -> tuple[str, str]:
    settings = get_settings()
    if not settings.database_url:
        raise ConfigurationError(
            "DATABASE_URL is not set: the database is configured over a direct connection"
        )
    return settings.database_url, settings.require_webhook_secret()


def run_webhook(args: argparse.Namespace) -> int:
    from planbus.deploy.database import configure_webhook

    database_url, secret = _database_and_secret()
    for line in configure_webhook(database_url, args.url, secret, args.channel).lines():
        print(line)
    return 0


def run_cron(args: argparse.Namespace) -> int:
    from planbus.deploy.database import schedule_cron

    database_url, secret = _database_and_secret()
    print(
        schedule_cron(
            database_url,
            job=args.job,
            function=args.function,
            function_url=args.url,
            schedule=args.schedule,
            body=args.body,
            timeout_seconds=args.timeout,
            secret=secret,
        )
    )
    return 0


def run_unschedule(args: argparse.Namespace) -> int:
    from planbus.deploy.database import unschedule_cron

    database_url = get_settings().database_url
    if not database_url:
        raise ConfigurationError("DATABASE_URL is not set")
    if unschedule_cron(database_url, args.job):
        print(f"pg_cron job {args.job!r} removed")
    return 0
