"""A persistent embedded PostgreSQL folder for `planbus dev` (.planbus/pg), used by one stack at a time.

`planbus dev` keeps its data between runs. A lock file makes a second `planbus dev` on the same folder
fail at once with a clear message instead of fighting over the server. If an earlier run was killed
without cleaning up (SIGKILL, a closed terminal), its PostgreSQL may still be running on the folder; once
we hold the lock, that server can only be such a leftover, and it is shut down before we start ours.
A first start interrupted during initdb (Ctrl-C reaches initdb too) leaves a half-made cluster; the
`initialised` marker, written only after a first successful start, tells it apart, and it is made again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import time
from pathlib import Path
from typing import IO

from planbus.devstack.console import Console
from planbus.errors import ConfigurationError

MARKER = "initialised"


class DataDirLock:
    """An exclusive advisory lock on `<folder>.lock`, released by `release()` or by the process dying."""

    def __init__(self, folder: Path) -> None:
        self.path = folder.with_name(folder.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise ConfigurationError(
                f"another planbus dev is using {self.path.with_suffix('')}: stop it first, or pass --data-dir"
            ) from exc
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def stop_leftover_server(data_dir: Path, timeout: float = 30.0) -> int | None:
    """Shut down a postmaster still running on `data_dir`; return its pid, or None if there was none.

    The pid file is trusted only if the process it names is a postgres whose command line names this
    folder, so a stale file whose pid now belongs to another program is left alone.
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not cmdline or not cmdline[0].endswith(b"postgres") or str(data_dir).encode() not in cmdline:
        return None
    try:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        raise ConfigurationError(f"a PostgreSQL left running on {data_dir} (pid {pid}) did not stop")
    return pid


def prepare_data_dir(folder: Path, console: Console) -> DataDirLock:
    """Lock the folder for this stack and clear what an earlier run left: a running server, a half-made
    cluster. Returns the held lock; call `mark_initialised` once the server has started."""
    lock = DataDirLock(folder)
    lock.acquire()
    try:
        leftover = stop_leftover_server(folder / "data")
        if leftover is not None:
            console.event(
                "stack", "WARNING", "stopped a PostgreSQL left running by an earlier run", pid=leftover
            )
        if (folder / "data").exists() and not (folder / MARKER).exists():
            console.event(
                "stack", "WARNING", "the first start of this data folder was interrupted; starting over"
            )
            shutil.rmtree(folder / "data")
    except BaseException:
        lock.release()
        raise
    return lock


def mark_initialised(folder: Path) -> None:
    """Record that the cluster in `folder` finished initdb and started once."""
    (folder / MARKER).touch()
