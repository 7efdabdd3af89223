"""The `planbus` command. Each subcommand lives in planbus/commands/<name>.py with `register(subparsers)`
and is imported only when the command line names it, so `planbus migrate` starts fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from planbus.errors import PlanbusError

COMMANDS = {
    "migrate": "apply pending migrations to DATABASE_URL",
    "configure": "deploy.sh's steps: check the configuration, point the database at the functions",
    "dev": "run the functions, webhook relay, scheduler and Telegram sink locally until Ctrl-C",
    "demo": "run the whole flow once on a local stack and exit",
    "status": "queue depth, oldest pending age, stale rows, recent failures",
    "limits": "show or change the daily plan-request limit per user",
    "leads": "show or change the lead statuses that stop a lead's reminders",
    "requests": "show, retry or list requests of any kind",
    "deploy": "deploy to Google Cloud (what ./deploy.sh runs): check, then run or print every command",
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="planbus", description="planbus: LLM plans for a Telegram Mini App")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in args_list if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"planbus.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(args_list)
    try:
        code: int = args.run(args)
    except PlanbusError as exc:
        print(f"planbus {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
