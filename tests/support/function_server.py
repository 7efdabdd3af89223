"""One deployed target as a real `functions-framework` process (gunicorn, as on Cloud Run), for tests that
need the real server: its output captured per stream, its worker's memory readable.

    with function_server("telegram_auth", env) as server:
        httpx.post(server.url, ...)
        server.worker_rss_kb(), server.stdout_lines(), server.stderr_lines()
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from planbus.devstack.stack import server_command
from planbus.devstack.supervisor import free_port, http_ready

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"


class FunctionServer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, folder: Path) -> None:
        self.process = process
        self.url = url
        self._folder = folder

    def stdout_lines(self) -> list[str]:
        return (self._folder / "stdout").read_text().splitlines()

    def stderr_lines(self) -> list[str]:
        return (self._folder / "stderr").read_text().splitlines()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the server process's children."""
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                children.append(int(entry.name))
        return children

    def worker_rss_kb(self) -> int:
        """Resident memory of the (single) worker, in kB."""
        [worker] = self.worker_pids()
        for line in Path(f"/proc/{worker}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for worker {worker}")


@contextmanager
def function_server(target: str, env: Mapping[str, str], timeout: float = 60.0) -> Iterator[FunctionServer]:
    """Start `target` on a free port with `env` added to this environment; stop it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix=f"planbus-{target}-") as folder_name:
        folder = Path(folder_name)
        with (folder / "stdout").open("wb") as stdout, (folder / "stderr").open("wb") as stderr:
            process = subprocess.Popen(
                server_command(target, MAIN, "127.0.0.1", port),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=stdout,
                stderr=stderr,
            )
        server = FunctionServer(process, url, folder)
        try:
            ready = http_ready(url)
            deadline = time.monotonic() + timeout
            while not ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"{target} did not start:\n"
                        + "\n".join(server.stdout_lines() + server.stderr_lines())
                    )
                time.sleep(0.05)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
