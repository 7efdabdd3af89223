"""How deploy shows and runs commands: every command is printed before it runs, with every secret value
masked, and so is everything the commands print. A dry run prints the same commands and runs none.

Secret values reach a command only on its stdin (`Runner.feed`) or in a private file, never in its argv;
the masking is the second line of defence, for what a command echoes back.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from planbus.errors import PlanbusError

# Shorter values would mask ordinary text; no real secret is that short.
MIN_MASKED = 4
_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,@%+-]+$")
# A describe command whose resource is missing, or whose API is still disabled (it holds nothing).
_MISSING = re.compile(
    r"NOT_FOUND|not found|does not exist|status=\[404\]|SERVICE_DISABLED|has not been used", re.IGNORECASE
)


class Refusal(PlanbusError):
    """Deploy stops: the configuration or the cloud is not in a state it can go on from."""


class CommandFailed(PlanbusError):
    """A command deploy ran failed; its output has been shown."""


class Probe(enum.Enum):
    """What a describe command found. A dry run cannot know: UNKNOWN, and both branches are shown."""

    FOUND = "found"
    MISSING = "missing"
    UNKNOWN = "unknown"


def quote(argv: Sequence[str]) -> str:
    """A command line as the operator would type it; arguments beyond the plain set in single quotes."""
    return " ".join(arg if _PLAIN.match(arg) else "'" + arg.replace("'", "'\\''") + "'" for arg in argv)


class Console:
    """The deploy's output: steps, commands, notes and warnings, each masked."""

    def __init__(self, prog: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.prog = prog
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.secrets: list[str] = []
        self.step_title = "start"

    def remember(self, *values: str) -> None:
        """Mask these values from now on."""
        found = {value for value in values if len(value) >= MIN_MASKED} | set(self.secrets)
        self.secrets = sorted(found, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _write(self, stream: TextIO, text: str) -> None:
        stream.write(self.mask(text) + "\n")
        stream.flush()

    def line(self, text: str) -> None:
        """A line of a command's output, as it came."""
        self._write(self.out, text)

    def step(self, title: str) -> None:
        self.step_title = title
        self._write(self.out, f"\n==> {title}")

    def command(self, argv: Sequence[str]) -> None:
        self._write(self.out, f"  + {quote(argv)}")

    def note(self, text: str) -> None:
        self._write(self.out, f"    {text}")

    def warn(self, text: str) -> None:
        self._write(self.err, f"{self.prog}: warning: {text}")

    def error(self, text: str) -> None:
        self._write(self.err, f"{self.prog}: {text}")

    def error_line(self, text: str) -> None:
        """A line of a command's output that explains why deploy stops."""
        self._write(self.err, text)


class Runner:
    """Runs the commands of a deploy (or, in a dry run, only shows them).

    The first word `gcloud` stands for the configured gcloud (GCLOUD); commands run in `cwd`, where
    `--source=functions` is found, and never stop to ask a question.
    """

    def __init__(
        self,
        console: Console,
        *,
        dry_run: bool,
        gcloud: str,
        cwd: Path,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.console = console
        self.dry_run = dry_run
        self.gcloud = gcloud
        self.cwd = cwd
        self.sleep = sleep
        # A question would hang an unattended deploy.
        self.env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return [self.gcloud, *argv[1:]] if argv[0] == "gcloud" else list(argv)

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> int:
        try:
            process = subprocess.Popen(
                self._argv(argv),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except OSError as exc:
            raise Refusal(f"cannot run {argv[0]}: {exc}") from exc
        assert process.stdout is not None
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        for line in process.stdout:
            self.console.line(line.rstrip("\n"))
        return process.wait()

    def run(self, argv: Sequence[str]) -> None:
        """Show the command, then run it; a failure stops the deploy."""
        self.console.command(argv)
        if not self.dry_run and self._run(argv) != 0:
            raise CommandFailed(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed")

    def feed(self, label: str, value: str, argv: Sequence[str]) -> None:
        """Like `run`, with `value` on the command's stdin; `label` names it in the output."""
        self.console.command(argv)
        self.console.note(f"(stdin: the value of {label})")
        if not self.dry_run and self._run(argv, stdin=value) != 0:
            raise CommandFailed(f"{argv[0]} failed")

    def retry(self, argv: Sequence[str], attempts: int = 5, pause: float = 10) -> None:
        """`run`, again after a pause when it fails: IAM bindings for an account created a moment ago fail
        until the account is known everywhere."""
        for attempt in range(1, attempts + 1):
            self.console.command(argv)
            if self.dry_run or self._run(argv) == 0:
                return
            if attempt < attempts:
                self.console.warn(
                    f"failed, retrying in {pause:g} s "
                    "(new service accounts take a moment to be known everywhere)"
                )
                self.sleep(pause)
        raise Refusal(f"gave up after {attempts} attempts: {quote(argv)}")

    def output(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """Run a command that only reads, without showing it: its status, stdout and stderr."""
        try:
            done = subprocess.run(
                self._argv(argv),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
        except OSError as exc:
            raise Refusal(f"cannot run {argv[0]}: {exc}") from exc
        return done.returncode, done.stdout, done.stderr

    def probe(self, argv: Sequence[str]) -> Probe:
        """Whether a describe command finds its resource. Any other failure stops the deploy before it
        changes anything."""
        return self.describe(argv)[0]

    def describe(self, argv: Sequence[str]) -> tuple[Probe, str]:
        """`probe`, with what the command printed on stdout when it found the resource."""
        self.console.command(argv)
        if self.dry_run:
            return Probe.UNKNOWN, ""
        status, out, err = self.output(argv)
        if status == 0:
            return Probe.FOUND, out
        if _MISSING.search(out + err):
            return Probe.MISSING, ""
        for line in (out + err).splitlines():
            self.console.error_line(line)
        raise Refusal("could not tell whether it exists (see above); stopped before changing it")

    def branch(self, state: Probe, text: str) -> None:
        """In a dry run, say which case the next command is for."""
        if state is Probe.UNKNOWN:
            self.console.note(f"({text})")
