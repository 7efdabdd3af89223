"""The stack's wiring without the servers: which database, which secret, what the functions' environment
holds, and that stopping undoes starting."""

from __future__ import annotations

from pathlib import Path

import pytest

from planbus.devstack.stack import Stack, StackOptions, safe_url
from planbus.settings import Settings, get_settings
from support.devstack_helpers import memory_console

NO_SERVERS = StackOptions(functions=())


def test_a_secret_is_generated_when_none_is_configured(database_url: str) -> None:
    console, _ = memory_console()
    first = Stack(Settings(database_url=database_url), NO_SERVERS, console)
    second = Stack(Settings(database_url=database_url), NO_SERVERS, console)
    assert first.secret_generated and len(first.secret) >= 40
    assert first.secret != second.secret
    assert first.child_environment()["WEBHOOK_SECRET"] == first.secret


def test_a_configured_secret_is_used_as_it_is(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "configured-secret")
    monkeypatch.setenv("DATABASE_URL", database_url)
    console, _ = memory_console()
    stack = Stack(get_settings(), NO_SERVERS, console)
    assert not stack.secret_generated
    env = stack.child_environment()
    assert (env["WEBHOOK_SECRET"], env["DATABASE_URL"]) == ("configured-secret", database_url)


def test_a_stack_on_database_url_uses_it_and_says_so(database_url: str, tmp_path: Path) -> None:
    console, _ = memory_console()
    state_file = tmp_path / "state.json"
    with Stack(
        Settings(database_url=database_url), StackOptions(functions=(), state_file=state_file), console
    ) as stack:
        assert stack.embedded is None and stack.applied == []
        lines = stack.describe()
        assert f"database              {database_url}  (DATABASE_URL)" in lines[1]
        assert "  migrations            up to date" in lines
        assert state_file.exists()
    assert not state_file.exists()


def test_an_embedded_stack_keeps_its_functions_off_a_remote_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-role-key")
    console, screen = memory_console()
    with Stack(get_settings(), NO_SERVERS, console) as stack:
        assert stack.embedded is not None
        data_dir = stack.embedded.data_dir
        env = stack.child_environment()
        assert "SUPABASE_URL" not in env and "SUPABASE_SERVICE_ROLE_KEY" not in env
        assert env["DATABASE_URL"] == stack.database_url
        assert len(stack.applied) > 0
    assert "SUPABASE_URL is set without DATABASE_URL" in screen.getvalue()
    assert not data_dir.exists()  # a temporary data folder goes with the stack


def test_urls_are_shown_without_their_password() -> None:
    assert safe_url("postgresql://postgres:s3cret@db.example.com:5432/postgres") == (
        "postgresql://postgres:***@db.example.com:5432/postgres"
    )
    assert (
        safe_url("postgresql://postgres@127.0.0.1:5432/test") == "postgresql://postgres@127.0.0.1:5432/test"
    )
