"""Function servers for the benchmarks: `functions-framework --target T --source S` as a child process.

Every server, planbus's targets and the bare baseline alike, runs the same way (gunicorn with the
framework's defaults: one worker, 4 threads per core), in a process group of its own so `kill()` can take
the whole tree down at once with SIGKILL, as a crashed instance goes. Output goes to a log file in the
benchmark's folder, so a server's logs cost what writing them costs and stay readable afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FunctionServer:
    """One functions-framework server on 127.0.0.1; `url` stays the same across restarts."""

    def __init__(self, target: str, source: Path, env: Mapping[str, str | None], log: Path) -> None:
        """`env` is added to this process's environment; a variable given as None is removed."""
        self.target = target
        self.source = source
        merged = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.env = {name: value for name, value in merged.items() if value is not None}
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until it answers HTTP."""
        script = Path(sys.executable).parent / "functions-framework"
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "functions_framework"]
        command = [*launcher, "--target", self.target, "--source", str(self.source)]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(self.source.parent),
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.target} exited with {self._proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/robots.txt", timeout=1.0)
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.target} was not ready within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the whole process group (the gunicorn master and its worker) and reap it."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self._proc = None

    def stop(self) -> None:
        """SIGTERM, a moment's grace, then SIGKILL whatever is left."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()


@contextmanager
def running(*servers: FunctionServer) -> Iterator[tuple[FunctionServer, ...]]:
    """Start the servers side by side; stop them all on exit."""
    try:
        with ThreadPoolExecutor(max_workers=max(len(servers), 1)) as pool:
            for future in [pool.submit(server.start) for server in servers]:
                future.result()
        yield servers
    finally:
        for server in servers:
            server.stop()
