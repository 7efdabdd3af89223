"""Child processes of the local stack: started in their own process group, watched, restarted, stopped.

A functions-framework server is a gunicorn master with worker children. Each server gets a session (and so
a process group) of its own, which is what lets us stop the whole tree at once and keeps a terminal's
Ctrl-C from reaching the children before the orchestrator can stop them in order. When a server dies
(crash, OOM, SIGKILL) the rest of its group is killed too (an orphaned worker would keep the port) and it
is started again on the same port, so the URLs the relay and scheduler hold stay valid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import httpx

from planbus.devstack.console import Console
from planbus.errors import ConfigurationError

GRACE_SECONDS = 5.0
# Restart backoff: 0.5 s, 1 s, 2 s, ... capped; a process that stayed up this long starts over at the base.
RESTART_BASE_DELAY = 0.5
RESTART_MAX_DELAY = 10.0
HEALTHY_AFTER_SECONDS = 30.0

# Runs first in every child: ask Linux to SIGTERM it when the orchestrator dies, even by SIGKILL (which no
# cleanup code survives), then become the real program. The pid check closes the race of a parent that
# died before the request was made. Elsewhere prctl is missing and the child simply runs.
LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness probe: any HTTP answer counts. functions-framework answers /robots.txt with 404
    without calling the function, so probing has no side effects."""

    def probe() -> bool:
        try:
            httpx.get(f"{url}/robots.txt", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    return probe


class ManagedProcess:
    """One supervised child: `start()` waits until it is ready; it is restarted whenever it dies."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        console: Console,
        ready: Callable[[], bool],
        cwd: str | None = None,
        grace: float = GRACE_SECONDS,
        on_restart: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.console = console
        self.ready = ready
        self.grace = grace
        self.on_restart = on_restart
        self.restarts = 0
        self._proc: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=40)
        self._watcher: threading.Thread | None = None
        self._pump_thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the current incarnation (the gunicorn master for a function server)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        """Spawn the process and wait until its readiness probe passes; it is watched from then on."""
        started = threading.Event()
        failure: list[BaseException] = []
        self._watcher = threading.Thread(
            target=self._run, args=(timeout, started, failure), name=f"watch-{self.name}", daemon=True
        )
        self._watcher.start()
        started.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        """SIGTERM the process group, wait up to the grace period, then SIGKILL what is left."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _terminate_group(proc, self.grace)
        if self._watcher is not None:
            self._watcher.join(timeout=self.grace + 5)
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=5)  # the last lines of output, then the pipe is closed

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                # stop() has already collected the previous incarnation; a new one would be orphaned.
                raise ConfigurationError(f"{self.name} is stopping")
            self._proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(os.getpid()), *self.argv],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            proc = self._proc
        self._pump_thread = threading.Thread(
            target=self._pump, args=(proc,), name=f"output-{self.name}", daemon=True
        )
        self._pump_thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                self._tail.append(raw.rstrip())
                self.console.output(self.name, raw)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                time.sleep(0.2)  # let the output thread collect the last lines
                raise ConfigurationError(
                    f"{self.name} exited with code {proc.returncode} before it was ready:\n"
                    + "\n".join(self._tail)
                )
            if self.ready():
                return
            if self._stopping.wait(0.1):
                return
        _terminate_group(proc, self.grace)
        raise ConfigurationError(f"{self.name} was not ready within {timeout:.0f} s")

    def _run(self, timeout: float, started: threading.Event, failure: list[BaseException]) -> None:
        # Every incarnation is spawned from this one thread, which lives as long as the process is
        # supervised: the parent-death signal fires when the spawning *thread* ends, not only the process.
        try:
            self._spawn()
            self._wait_ready(timeout)
        except (OSError, ConfigurationError) as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        self._watch()

    def _watch(self) -> None:
        delay = RESTART_BASE_DELAY
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            # The master is gone; its workers may not be. Clear the group so the port is free again.
            _kill_group(proc.pid)
            if time.monotonic() - started > HEALTHY_AFTER_SECONDS:
                delay = RESTART_BASE_DELAY
            self.console.event(
                "supervisor", "WARNING", f"{self.name} exited; restarting", code=code, in_seconds=delay
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_DELAY)
            try:
                self._spawn()
                self._wait_ready(timeout=60.0)
            except (OSError, ConfigurationError) as exc:
                self.console.event("supervisor", "ERROR", f"{self.name} did not come back: {exc}")
                continue
            if self._stopping.is_set():
                return
            self.restarts += 1
            self.console.event("supervisor", "INFO", f"{self.name} is back", pid=self.pid)
            if self.on_restart is not None:
                self.on_restart(self)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _terminate_group(proc: subprocess.Popen[str], grace: float) -> None:
    """Stop a whole process group: SIGTERM, wait for the leader, then SIGKILL the group regardless."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Workers that outlived their master, or a master that ignored SIGTERM.
    _kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
