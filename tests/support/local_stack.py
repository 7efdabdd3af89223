"""`planbus dev` as a real process for the end-to-end tests: started with a state file, read through its
output, stopped the way a developer stops it (Ctrl-C)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.devstack_helpers import wait_until

PLANBUS = str(Path(sys.executable).parent / "planbus")


class DevStack:
    """One `planbus dev` process with its output in a file and its state file beside it."""

    def __init__(self, folder: Path, env: dict[str, str], *args: str) -> None:
        self.state_file = folder / "stack.json"
        self.log_file = folder / "dev.log"
        self._log = self.log_file.open("w")
        self.process = subprocess.Popen(
            [PLANBUS, "dev", "--state-file", str(self.state_file), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.returncode: int | None = None

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"planbus dev exited with {self.process.returncode}:\n{self.output()}")
            return self.state_file.exists()

        wait_until(ready, timeout)
        return self.state()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def output(self) -> str:
        return self.log_file.read_text()

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C, and wait for a clean exit."""
        if self.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.returncode = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
                raise
            finally:
                self._log.close()
        return self.returncode
