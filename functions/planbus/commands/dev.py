"""`planbus dev`: the local stack, left running until Ctrl-C or SIGTERM, with its URLs printed."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

from planbus.commands.stack_options import add_stack_options
from planbus.devstack.console import Console
from planbus.devstack.stack import Stack, StackOptions, project_root
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "dev", help="run the functions, webhook relay, scheduler and Telegram sink locally until Ctrl-C"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=project_root() / ".planbus" / "pg",
        help="embedded PostgreSQL folder, kept between runs (default: .planbus/pg; unused with DATABASE_URL)",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="write the database URL, function URLs and process ids here as JSON (no secrets)",
    )
    add_stack_options(parser, reminders_every=10.0, sweep_every=30.0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    console = Console(min_severity="WARNING" if args.quiet else "DEBUG")
    options = StackOptions(
        data_dir=None if settings.database_url else args.data_dir.resolve(),
        reminders_every=args.reminders_every,
        sweep_every=args.sweep_every,
        state_file=args.state_file,
        dispatch=args.dispatch,
    )
    stack = Stack(settings, options, console)
    stopped = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        # Until the stack is up, a signal interrupts start-up; afterwards it ends the wait below.
        if stopped.is_set():
            console.line("stopping; please wait")
            return
        stopped.set()
        if not up.is_set():
            raise KeyboardInterrupt

    up = threading.Event()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        # Ctrl-C or SIGTERM (request_stop) is how the stack is stopped, not an error.
        with contextlib.suppress(KeyboardInterrupt):
            console.line("planbus dev: starting the local stack")
            stack.start()
            up.set()
            for text in stack.describe():
                console.line(text)
            if stack.secret_generated:
                console.line(
                    f"  {'webhook secret':<21} {stack.secret}  (generated for this run; "
                    "send it as X-Webhook-Secret)"
                )
            console.line(f"  {'plan generator':<21} {settings.generator}")
            console.line("ready. Press Ctrl-C to stop.")
            stopped.wait()
    finally:
        stopped.set()
        console.line("planbus dev: stopping")
        stack.stop()
        console.line("planbus dev: stopped")
    return 0
