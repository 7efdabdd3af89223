"""`planbus demo`: start the local stack, make one plan the way the Mini App would, deliver a reminder."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from planbus.commands.stack_options import add_stack_options
from planbus.devstack.console import Console
from planbus.devstack.demo import run_demo
from planbus.devstack.stack import StackOptions
from planbus.settings import get_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole flow once on a local stack and exit")
    add_stack_options(parser, reminders_every=1.0, sweep_every=5.0)
    parser.set_defaults(run=run)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    console = Console(min_severity="WARNING" if args.quiet else "DEBUG")
    # SIGTERM stops the demo like Ctrl-C: the stack's context manager then stops every process.
    signal.signal(signal.SIGTERM, _interrupt)
    options = StackOptions(
        data_dir=None,
        reminders_every=args.reminders_every,
        sweep_every=args.sweep_every,
        dispatch=args.dispatch,
    )
    return run_demo(settings, console, options)
