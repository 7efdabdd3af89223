"""The command-line options `planbus demo` and `planbus dev` share: how the local stack runs."""

from __future__ import annotations

import argparse


def add_stack_options(parser: argparse.ArgumentParser, *, reminders_every: float, sweep_every: float) -> None:
    """--reminders-every, --sweep-every (with these defaults), --dispatch and --quiet."""
    parser.add_argument(
        "--reminders-every",
        type=float,
        default=reminders_every,
        metavar="SECONDS",
        help=f"how often the scheduler calls send_due_reminders (default {reminders_every:g})",
    )
    parser.add_argument(
        "--sweep-every",
        type=float,
        default=sweep_every,
        metavar="SECONDS",
        help=f"how often the scheduler calls reset_stale_requests (default {sweep_every:g})",
    )
    parser.add_argument(
        "--dispatch",
        choices=("cloud-tasks", "inline"),
        default="cloud-tasks",
        help="cloud-tasks (default): webhooks enqueue on a local Cloud Tasks emulator, which calls the "
        "workers; inline: each webhook makes its LLM call itself",
    )
    parser.add_argument("--quiet", action="store_true", help="show warnings and errors of the processes only")
