"""`planbus configure`: the steps of `planbus deploy` that run locally or in the database, one at a time.

planbus configure check [--env FILE] [--infra DIR]
    check a deployment's configuration (the env file, else the environment) against the settings and
    infra/, as `planbus deploy` does before anything changes
planbus configure webhook --kind KIND --url URL [--channel NAME]
    store a kind's webhook URL and WEBHOOK_SECRET in DATABASE_URL's database for its trigger
planbus configure cron --job NAME --function TARGET --url URL --schedule CRON --body JSON --timeout S
    create or replace a Supabase Cron (pg_cron) job calling a function with the secret
planbus configure unschedule --job NAME
    remove a pg_cron job of that name, if there is one
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from planbus.errors import ConfigurationError
from planbus.settings import get_settings

ROOT = Path(__file__).resolve().parents[3]


def register(sub: Any) -> None:
    from planbus.deploy.kinds import KINDS

    parser = sub.add_parser("configure", help="deploy's local and database steps")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = actions.add_parser("check", help="check a deployment's configuration")
    check.add_argument("--env", type=Path, help="the env file (default: .env.deploy, else the environment)")
    check.add_argument("--infra", type=Path, default=ROOT / "infra", help="functions.conf and the rest")
    check.set_defaults(run=run_check)

    webhook = actions.add_parser("webhook", help="store a kind's webhook URL and the secret in the database")
    webhook.add_argument("--kind", required=True, choices=[kind.name for kind in KINDS])
    webhook.add_argument("--url", required=True, help="URL of the kind's deployed webhook function")
    webhook.add_argument("--channel", help="InsForge realtime channel (default planbus-<kind>)")
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


def run_check(args: argparse.Namespace) -> int:
    from planbus.deploy.config import DEPLOY_SETS, check
    from planbus.deploy.envfile import load_values

    infra = args.infra.resolve()
    source = load_values(args.env, ROOT / ".env.deploy", infra, os.environ, DEPLOY_SETS)
    deployment = check(source.values, infra)
    print(
        f"configuration of {source.source} is valid: {len(deployment.functions)} functions, "
        f"{len(deployment.schedules)} schedules, plan generator {deployment.settings.generator}, "
        f"dispatch {deployment.dispatch}"
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
    from planbus.deploy.kinds import KINDS

    kind = next(kind for kind in KINDS if kind.name == args.kind)
    database_url, secret = _database_and_secret()
    channel = args.channel or kind.channel("planbus")
    for line in configure_webhook(database_url, kind, args.url, secret, channel).lines():
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
