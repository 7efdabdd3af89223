"""The whole local stack in one object: database, migrations, function servers, relay, scheduler, sink.

`Stack.start()` brings the parts up in dependency order and `Stack.stop()` takes them down in reverse,
also after a failed start, so nothing outlives the orchestrator when it is stopped with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planbus.devstack.console import Console
from planbus.devstack.embedded_data import DataDirLock, mark_initialised, prepare_data_dir
from planbus.devstack.relay import WebhookRelay
from planbus.devstack.scheduler import Job, Scheduler
from planbus.devstack.sink import TelegramSink
from planbus.devstack.supervisor import ManagedProcess, free_port, http_ready
from planbus.devstack.tasks_emulator import Dispatch, LocalDispatch, Worker
from planbus.embedded import EmbeddedPostgres
from planbus.errors import ConfigurationError
from planbus.kinds import KINDS
from planbus.migrate import default_migrations_dir, migrate
from planbus.settings import Settings

# Every kind's webhook (the relay posts each table's inserts to its kind's), the batch jobs and the auth.
FUNCTIONS = (
    *(kind.handle_target for kind in KINDS),
    "send_due_reminders",
    "reset_stale_requests",
    "telegram_auth",
)
# When the supervised servers may take long to start: cold imports on a busy 2-core machine.
SERVER_START_TIMEOUT = 90.0


def project_root() -> Path:
    """The checkout: the folder holding migrations/ and functions/main.py."""
    return default_migrations_dir().parent


@dataclass(frozen=True)
class StackOptions:
    """How to run the stack; the defaults are `planbus dev`'s."""

    data_dir: Path | None = None  # embedded PostgreSQL's folder; None: a temporary one, removed at stop
    source: Path = field(default_factory=lambda: project_root() / "functions" / "main.py")
    functions: tuple[str, ...] = FUNCTIONS
    reminders_every: float = 10.0
    sweep_every: float = 30.0
    host: str = "127.0.0.1"
    state_file: Path | None = None
    dispatch: Dispatch = "cloud-tasks"  # the emulator and the workers, as deployed; or "inline"


class Stack:
    """Start with `start()` (or `with Stack(...) as stack:`); `stop()` is safe to call at any point."""

    def __init__(self, settings: Settings, options: StackOptions, console: Console) -> None:
        self.settings = settings
        self.options = options
        self.console = console
        self.database_url = settings.database_url or ""
        self.embedded: EmbeddedPostgres | None = None
        self.secret_generated = settings.webhook_secret is None
        self.secret = (
            secrets.token_urlsafe(32)
            if settings.webhook_secret is None
            else settings.webhook_secret.get_secret_value()
        )
        self.urls: dict[str, str] = {}
        self.servers: dict[str, ManagedProcess] = {}
        self.sink: TelegramSink | None = None
        self.relay: WebhookRelay | None = None
        self.scheduler: Scheduler | None = None
        self.dispatch = LocalDispatch(
            options.dispatch,
            console,
            functions=options.functions,
            workers=[Worker(k.handle_target, k.process_target, k.worker_url_setting.upper()) for k in KINDS],
            host=options.host,
        )
        self.applied: list[str] = []
        self._lock: DataDirLock | None = None
        self._embedded_up = False

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Task queue, database, migrations, sink, function servers, relay, scheduler: each ready before the
        next."""
        self.dispatch.start(self.settings)
        if not self.database_url:
            self._start_embedded()
        self.applied = migrate(self.database_url)
        self.sink = TelegramSink(self.database_url, console=self.console)
        self.sink.start()
        self._start_servers()
        targets = {
            kind.table: self.urls[kind.handle_target] for kind in KINDS if kind.handle_target in self.urls
        }
        if targets:
            # A delivery waits as long as a claim can hold (an LLM call included) before it counts as failed.
            self.relay = WebhookRelay(
                self.database_url,
                targets,
                self.secret,
                console=self.console,
                timeout=self.settings.lease_seconds + 10,
            )
            self.relay.start()
        jobs = [
            Job(name, self.urls[name], every)
            for name, every in (
                ("send_due_reminders", self.options.reminders_every),
                ("reset_stale_requests", self.options.sweep_every),
            )
            if name in self.urls
        ]
        if jobs:
            self.scheduler = Scheduler(jobs, self.secret, console=self.console)
            self.scheduler.start()
        self._write_state()

    def stop(self) -> None:
        """Stop everything that was started, in reverse order; one part failing to stop does not keep the
        others running (the first error is raised once all were tried)."""
        errors: list[Exception] = []

        def attempt(step: Callable[[], object]) -> None:
            try:
                step()
            except Exception as exc:
                self.console.event("stack", "ERROR", f"while stopping: {exc}")
                errors.append(exc)

        for part in (self.scheduler, self.relay):
            if part is not None:
                attempt(part.stop)
        self.scheduler = self.relay = None
        attempt(self.dispatch.stop)
        if self.servers:
            with ThreadPoolExecutor(max_workers=len(self.servers)) as pool:
                for future in [pool.submit(server.stop) for server in self.servers.values()]:
                    attempt(future.result)
            self.servers = {}
        if self.sink is not None:
            attempt(self.sink.stop)
            self.sink = None
        if self.embedded is not None:
            if self._embedded_up:
                attempt(self.embedded.stop)
            else:
                # Interrupted inside initdb or pg_ctl start: stop what may have come up, but a half-made
                # cluster refusing to stop is expected here, not an error (the next start clears it).
                with contextlib.suppress(ConfigurationError):
                    self.embedded.stop()
            self.embedded = None
            self._embedded_up = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.options.state_file is not None:
            self.options.state_file.unlink(missing_ok=True)
        if errors:
            raise errors[0]

    def child_environment(self) -> dict[str, str]:
        """The environment of every function server: ours, plus the stack's database and secret."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "WEBHOOK_SECRET": self.secret,
            "PYTHONUNBUFFERED": "1",
        }
        if self.embedded is not None:
            # The functions must use the database the relay listens on, not a remote project's REST API.
            env.pop("SUPABASE_URL", None)
            env.pop("SUPABASE_SERVICE_ROLE_KEY", None)
        return self.dispatch.environment(env, self.urls)

    def _start_embedded(self) -> None:
        if self.settings.supabase_url:
            self.console.event(
                "stack",
                "WARNING",
                "SUPABASE_URL is set without DATABASE_URL: the stack runs on embedded PostgreSQL "
                "(the relay needs a direct connection to LISTEN); set DATABASE_URL to use the project",
            )
        data_dir = self.options.data_dir
        if data_dir is not None:
            self._lock = prepare_data_dir(data_dir, self.console)
        self.embedded = EmbeddedPostgres(base_dir=data_dir)
        self.database_url = self.embedded.start()
        self._embedded_up = True
        if data_dir is not None:
            mark_initialised(data_dir)

    def _start_servers(self) -> None:
        # Every URL first: with Cloud Tasks each server is told where the workers are.
        for name in self.dispatch.targets:
            self.urls[name] = f"http://{self.options.host}:{free_port(self.options.host)}"
        env = self.child_environment()
        for name, url in self.urls.items():
            self.servers[name] = ManagedProcess(
                name,
                server_command(name, self.options.source, self.options.host, int(url.rsplit(":", 1)[1])),
                env=env,
                console=self.console,
                ready=http_ready(url),
                cwd=str(project_root()),
                on_restart=lambda _server: self._write_state(),
            )
        with ThreadPoolExecutor(max_workers=len(self.servers) or 1) as pool:
            for future in [pool.submit(s.start, SERVER_START_TIMEOUT) for s in self.servers.values()]:
                future.result()

    def describe(self) -> list[str]:
        """The stack's parts and addresses, for the terminal."""
        where = (
            f"embedded PostgreSQL, data in {self.embedded.data_dir}"
            if self.embedded is not None
            else "DATABASE_URL"
        )
        lines = ["local stack:", f"  {'database':<21} {safe_url(self.database_url)}  ({where})"]
        for name, url in self.urls.items():
            lines.append(f"  {name:<21} {url}  (functions-framework, pid {self.servers[name].pid})")
        if self.relay is not None:
            webhooks = ", ".join(kind.handle_target for kind in KINDS if kind.table in self.relay.targets)
            lines.append(f"  {'webhook relay':<21} LISTEN planbus_events → POST {webhooks}")
        if self.scheduler is not None:
            lines.append(
                f"  {'scheduler':<21} "
                + ", ".join(f"{job.name} every {job.every:g} s" for job in self.scheduler.jobs.values())
            )
        lines.extend(self.dispatch.describe())
        lines.append(f"  {'telegram sink':<21} LISTEN planbus_outbox")
        migrations = f"applied {len(self.applied)}, last {self.applied[-1]}" if self.applied else "up to date"
        lines.append(f"  {'migrations':<21} {migrations}")
        return lines

    def state(self) -> dict[str, Any]:
        """What other tools need to find the stack (no secrets): database (password masked), URLs and pids."""
        return {
            "pid": os.getpid(),
            "database_url": safe_url(self.database_url),
            "embedded": self.embedded is not None,
            "dispatch": self.dispatch.state(),
            "functions": {
                name: {"url": self.urls[name], "pid": server.pid, "restarts": server.restarts}
                for name, server in self.servers.items()
            },
        }

    def _write_state(self) -> None:
        path = self.options.state_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.state(), indent=2))
        partial.replace(path)


def server_command(target: str, source: Path, host: str, port: int) -> list[str]:
    """`functions-framework --target X --source main.py --host H --port P`, from this environment."""
    script = Path(sys.executable).parent / "functions-framework"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "functions_framework"]
    return [*launcher, "--target", target, "--source", str(source), "--host", host, "--port", str(port)]


def safe_url(url: str) -> str:
    """The URL without its password, in the credentials or a `password` query parameter (libpq's)."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
