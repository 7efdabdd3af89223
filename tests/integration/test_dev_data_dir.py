"""planbus dev's persistent embedded PostgreSQL folder: one stack at a time, and a server an earlier,
killed run left behind is shut down before a new one starts."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from planbus.devstack.embedded_data import (
    DataDirLock,
    mark_initialised,
    prepare_data_dir,
    stop_leftover_server,
)
from planbus.embedded import EmbeddedPostgres
from planbus.errors import ConfigurationError
from support.devstack_helpers import memory_console


def test_a_second_stack_on_the_same_folder_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    first, second = DataDirLock(tmp_path / "pg"), DataDirLock(tmp_path / "pg")
    first.acquire()
    with pytest.raises(ConfigurationError, match="another planbus dev is using"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_a_pid_file_naming_some_other_program_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")
    assert stop_leftover_server(data) is None
    (data / "postmaster.pid").write_text("not a pid\n")
    assert stop_leftover_server(data) is None
    assert stop_leftover_server(tmp_path / "missing") is None


def test_a_server_left_running_on_the_folder_is_shut_down() -> None:
    # Under /tmp itself: when run as root the server's own user must be able to reach the folder.
    base = Path(tempfile.mkdtemp(prefix="planbus-leftover-"))
    try:
        server = EmbeddedPostgres(base_dir=base)
        url = server.start()
        pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
        assert stop_leftover_server(server.data_dir) == pid
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        assert not (server.data_dir / "postmaster.pid").exists()
    finally:
        stop_leftover_server(base / "data")
        shutil.rmtree(base, ignore_errors=True)


def test_a_cluster_whose_first_start_was_interrupted_is_made_again(tmp_path: Path) -> None:
    folder = tmp_path / "pg"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "PG_VERSION").write_text("18\n")  # initdb got this far, then Ctrl-C
    console, screen = memory_console()
    lock = prepare_data_dir(folder, console)
    lock.release()
    assert not (folder / "data").exists()
    assert "the first start of this data folder was interrupted" in screen.getvalue()


def test_a_cluster_that_started_once_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "pg"
    (folder / "data").mkdir(parents=True)
    mark_initialised(folder)
    console, screen = memory_console()
    prepare_data_dir(folder, console).release()
    assert (folder / "data").exists() and screen.getvalue() == ""
