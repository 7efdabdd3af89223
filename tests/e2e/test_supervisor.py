"""The supervisor: function servers as real functions-framework processes, restarted when they die, and
stopped with every process of their group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from planbus.devstack.stack import server_command
from planbus.devstack.supervisor import ManagedProcess, free_port, http_ready
from planbus.errors import ConfigurationError
from support.devstack_helpers import group_alive, memory_console, wait_until

SOURCE = """
import os

import functions_framework


@functions_framework.http
def whoami(request):
    print('{"severity": "INFO", "message": "asked", "pid": %d}' % os.getpid(), flush=True)
    return {"pid": os.getpid(), "ppid": os.getppid()}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "main.py"
    path.write_text(SOURCE)
    return path


def server(source: Path, target: str = "whoami", **kwargs: object) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    console, _ = memory_console()
    process = ManagedProcess(
        target,
        server_command(target, source, "127.0.0.1", port),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        console=console,
        ready=http_ready(url),
        grace=5.0,
        **kwargs,  # type: ignore[arg-type]
    )
    return process, url


def test_a_server_serves_once_ready_and_stops_with_its_whole_process_group(source: Path) -> None:
    process, url = server(source)
    process.start(timeout=60)
    try:
        answer = httpx.post(url, timeout=10).json()
        master = process.pid
        assert master is not None and answer["ppid"] == master  # a gunicorn worker under the master
    finally:
        process.stop()
    assert not group_alive(master)
    assert not alive(answer["pid"])


def test_a_server_that_dies_is_restarted_on_the_same_port(source: Path) -> None:
    restarted: list[int | None] = []
    process, url = server(source, on_restart=lambda p: restarted.append(p.pid))
    process.start(timeout=60)
    try:
        before = httpx.post(url, timeout=10).json()
        os.kill(before["ppid"], signal.SIGKILL)  # the master only: its worker is orphaned
        wait_until(lambda: process.restarts == 1, timeout=60)
        after = httpx.post(url, timeout=10).json()
        assert after["ppid"] == process.pid != before["ppid"]
        assert restarted == [process.pid]
        assert not alive(before["pid"]), "the orphaned worker of the dead master was not cleared"
    finally:
        process.stop()
    assert not group_alive(after["ppid"])


def test_a_target_missing_from_the_source_fails_to_start_with_its_output(source: Path) -> None:
    process, _ = server(source, target="handle_plan_request")
    with pytest.raises(ConfigurationError) as failure:
        process.start(timeout=60)
    message = str(failure.value)
    assert message.startswith("handle_plan_request exited with code")
    assert "handle_plan_request" in message.split("\n", 1)[1]  # functions-framework's own complaint
    process.stop()


def test_the_output_of_a_server_reaches_the_console_rendered(source: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    console, buffer = memory_console()
    process = ManagedProcess(
        "whoami",
        server_command("whoami", source, "127.0.0.1", port),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        console=console,
        ready=http_ready(url),
    )
    process.start(timeout=60)
    try:
        pid = httpx.post(url, timeout=10).json()["pid"]
        wait_until(lambda: f"asked  pid={pid}" in buffer.getvalue(), timeout=30)
    finally:
        process.stop()


ORCHESTRATOR = """
import os, sys, time
from pathlib import Path
from planbus.devstack.console import Console
from planbus.devstack.stack import server_command
from planbus.devstack.supervisor import ManagedProcess, free_port, http_ready

port = free_port()
process = ManagedProcess(
    "whoami", server_command("whoami", Path(sys.argv[1]), "127.0.0.1", port), env=dict(os.environ),
    console=Console(), ready=http_ready(f"http://127.0.0.1:{port}"),
)
process.start(timeout=60)
Path(sys.argv[2]).write_text(str(process.pid))
time.sleep(600)
"""


def test_servers_do_not_outlive_an_orchestrator_killed_without_warning(source: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    orchestrator = subprocess.Popen(
        [sys.executable, "-c", ORCHESTRATOR, str(source), str(pid_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=60)
        server = int(pid_file.read_text())
        assert group_alive(server)
    finally:
        orchestrator.kill()  # SIGKILL: no cleanup code runs
        orchestrator.wait()
    wait_until(lambda: not group_alive(server), timeout=30)
