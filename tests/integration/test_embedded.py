"""The embedded PostgreSQL: starts, serves, stops with nothing left behind, and respects the file system."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from planbus.embedded import SERVER_USER, EmbeddedPostgres
from planbus.errors import ConfigurationError


def processes_using(path: Path) -> list[int]:
    """Every process whose command line names `path` (a postmaster is started with -D <path>/data)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether a process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def project_dir() -> Iterator[Path]:
    """A project-owned folder any user may traverse, as a checkout's `.planbus/` would be."""
    folder = Path(tempfile.mkdtemp(prefix="planbus-project-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_server_starts_serves_and_stops_leaving_no_process_or_folder() -> None:
    server = EmbeddedPostgres()
    url = server.start()
    try:
        base, pid = server.base_dir, server.pid
        assert base is not None and pid is not None
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_setting('listen_addresses')").fetchone() == ("127.0.0.1",)
            assert conn.execute("SELECT gen_random_uuid() IS NOT NULL").fetchone() == (True,)
        assert pid in processes_using(base)
    finally:
        server.stop()
    assert not running(pid)
    assert processes_using(base) == []
    assert refuses_connections(server.port)
    assert not base.exists()


def test_a_project_folder_keeps_its_data_across_restarts(project_dir: Path) -> None:
    base = project_dir / ".planbus" / "pg"
    first = EmbeddedPostgres(base_dir=base)
    with psycopg.connect(first.start(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')")
    first.stop()
    assert processes_using(base) == []

    second = EmbeddedPostgres(base_dir=base)
    try:
        with psycopg.connect(second.start()) as conn:
            assert conn.execute("SELECT note FROM kept").fetchone() == ("still here",)
    finally:
        second.stop()
    assert (base / "data" / "PG_VERSION").exists()
    assert processes_using(base) == []


def test_no_directory_outside_the_data_folder_changes_permissions(project_dir: Path) -> None:
    base = project_dir / "pg"
    parents = [project_dir, *project_dir.parents]
    before = {p: (p.stat().st_mode, p.stat().st_uid) for p in parents}
    server = EmbeddedPostgres(base_dir=base)
    server.start()
    try:
        assert {p: (p.stat().st_mode, p.stat().st_uid) for p in parents} == before
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data folder to another user")
def test_as_root_a_folder_the_server_user_cannot_reach_is_refused_up_front(project_dir: Path) -> None:
    private = project_dir / "private"
    private.mkdir(mode=0o700)
    server = EmbeddedPostgres(base_dir=private / "pg")
    with pytest.raises(ConfigurationError, match=rf"{SERVER_USER}, which cannot enter {private}"):
        server.start()
    assert private.stat().st_mode & 0o777 == 0o700
    assert processes_using(private) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data folder to another user")
def test_as_root_the_server_runs_as_the_unprivileged_user(project_dir: Path) -> None:
    server = EmbeddedPostgres(base_dir=project_dir / "pg")
    server.start()
    try:
        status = Path(f"/proc/{server.pid}/status").read_text()
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        assert uid != 0
        assert (project_dir / "pg").stat().st_uid == uid
    finally:
        server.stop()


def test_a_failed_start_leaves_no_process_and_no_temporary_folder() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedPostgres(port=port)
        with pytest.raises(ConfigurationError, match="pg_ctl failed"):
            server.start()
    assert server.base_dir is not None
    assert not server.base_dir.exists()
    assert processes_using(server.base_dir) == []


def test_stopping_a_server_that_never_started_does_nothing() -> None:
    EmbeddedPostgres().stop()
