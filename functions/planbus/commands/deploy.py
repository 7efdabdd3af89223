"""`planbus deploy`: deploys planbus to Google Cloud against a Supabase (or InsForge, or plain PostgreSQL)
database. ./deploy.sh is its entry point; `planbus.deploy.plan` says what it runs, in which order.

The env file and infra/ are read and checked once, here, before anything changes; secret values reach
gcloud only on its stdin or in private files, and are masked in everything printed.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planbus.deploy.console import CommandFailed, Console, Refusal, Runner
from planbus.errors import PlanbusError

ROOT = Path(__file__).resolve().parents[3]
USAGE = """\
usage: {prog} [--env FILE] [--only FUNCTION] [--dry-run] [--infra DIR]

  --env FILE       deploy variables and settings, one NAME=value a line (default: .env.deploy, or
                   the environment when that file does not exist); infra/env.example documents them
  --only FUNCTION  deploy one function of infra/functions.conf (its secrets, webhook and schedules,
                   and the queue when it dispatches work); migrations still run
  --dry-run        check the configuration and print every command without running any
  --infra DIR      the description to deploy (default: infra/ beside deploy.sh)

GCLOUD=/path/to/gcloud selects another gcloud."""


@dataclass
class Options:
    env_file: Path | None = None
    only: str | None = None
    dry_run: bool = False
    infra: Path = ROOT / "infra"
    prog: str = "planbus deploy"
    help: bool = False


def register(sub: Any) -> None:
    # The options are deploy.sh's, parsed below as deploy.sh parsed them ('+' keeps argparse off them).
    parser = sub.add_parser("deploy", help="deploy to Google Cloud", add_help=False, prefix_chars="+")
    parser.add_argument("argv", nargs="*")
    parser.set_defaults(run=run)


def parse(argv: Sequence[str]) -> Options:
    """deploy.sh's options; --called-as NAME is how deploy.sh names itself in messages."""
    options, args = Options(), list(argv)
    while args:
        arg = args.pop(0)
        name, has_value, value = arg.partition("=")
        if name in ("--env", "--only", "--infra", "--called-as"):
            if not has_value:
                if not args:
                    raise Refusal(f"{name} needs a value (see --help)")
                value = args.pop(0)
            if name == "--env":
                options.env_file = Path(value)
            elif name == "--only":
                options.only = value
            elif name == "--infra":
                options.infra = Path(value)
            else:
                options.prog = value
        elif arg == "--dry-run":
            options.dry_run = True
        elif arg in ("-h", "--help"):
            options.help = True
        else:
            raise Refusal(f"unknown argument {arg} (see --help)")
    return options


def run(args: argparse.Namespace) -> int:
    argv: list[str] = args.argv
    called_as = next((a.partition("=")[2] for a in argv if a.startswith("--called-as=")), "planbus deploy")
    console = Console(called_as)
    try:
        options = parse(argv)
        if options.help:
            print(USAGE.format(prog=_again(options.prog)))
            return 0
        deploy(options, console)
    except CommandFailed:
        console.error(
            f'stopped at "{console.step_title}": the command above failed; fix it and run '
            f"{console.prog} again (every step is safe to repeat)"
        )
        return 1
    except Refusal as exc:
        console.error(str(exc))
        return 1
    except PlanbusError as exc:
        console.line(f"{exc}")
        console.error(
            f'stopped at "{console.step_title}": fix it and run {console.prog} again (every step is safe '
            "to repeat)"
        )
        return 1
    return 0


def _again(prog: str) -> str:
    """How the operator runs this again: ./deploy.sh, or planbus deploy."""
    return "./deploy.sh" if prog == "deploy.sh" else prog


def deploy(options: Options, console: Console) -> None:
    from planbus.deploy.config import DEPLOY_SETS, check
    from planbus.deploy.envfile import load_values
    from planbus.deploy.plan import Plan

    infra = options.infra.resolve()
    if not infra.is_dir():
        raise Refusal(f"no infra folder at {options.infra}")
    env_file = options.env_file.absolute() if options.env_file else None
    try:
        source = load_values(env_file, ROOT / ".env.deploy", infra, os.environ, DEPLOY_SETS)
    except PlanbusError as exc:
        raise Refusal(str(exc)) from exc
    values = source.values
    console.remember(*_secrets_of(values))
    if options.dry_run:
        console.line(f"{console.prog}: dry run of {source.source}: every command is printed, none is run")
    console.step("Configuration")
    for file in ("main.py", "requirements.txt"):
        if not (ROOT / "functions" / file).is_file():
            raise Refusal(f"functions/{file} is missing: Cloud Functions builds the source from it")
    try:
        deployment = check(values, infra)
    except PlanbusError as exc:
        for line in str(exc).splitlines():
            console.line(line)
        raise Refusal(
            f"stopped: fix the configuration in {source.source} or {infra} (nothing was changed)"
        ) from exc
    console.line(
        f"configuration is valid: {len(deployment.functions)} functions, {len(deployment.schedules)} "
        f"schedules, plan generator {deployment.settings.generator}"
    )
    for warning in deployment.warnings():
        console.line(f"note: {warning}")
    from planbus.deploy.upload import upload_size

    size = upload_size(ROOT / "functions", ROOT / "infra" / "gcloudignore")
    console.note(f"each function uploads functions/ without what infra/gcloudignore leaves out: {size}")
    with tempfile.TemporaryDirectory(prefix="planbus-deploy-") as work:
        runner = Runner(
            console, dry_run=options.dry_run, gcloud=os.environ.get("GCLOUD") or "gcloud", cwd=ROOT
        )
        plan = Plan(deployment, runner, Path(work), only=options.only, infra=infra)
        if not options.dry_run and source.file is not None:
            _warn_about_env_file(source.file, console)
        plan.run()


def _secrets_of(values: dict[str, str]) -> list[str]:
    """Every value that must never be shown: the secret settings, and DATABASE_URL's password."""
    from urllib.parse import urlsplit

    from planbus.deploy.config import secret_settings

    found = [value for name, value in values.items() if name in secret_settings()]
    try:
        password = urlsplit(values.get("DATABASE_URL", "")).password
    except ValueError:
        password = None
    return found + ([password] if password else [])


def _warn_about_env_file(path: Path, console: Console) -> None:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        console.warn(f"{path} holds secrets and others may read it: chmod 600 {path}")
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--error-unmatch", "--", str(path)],
        capture_output=True,
        check=False,
    )
    if tracked.returncode == 0:
        console.warn(f"{path} is tracked by git: its secrets are in the repository history")
