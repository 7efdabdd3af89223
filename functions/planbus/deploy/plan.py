"""The command plan of a deploy, in the order it runs:

1. the prerequisites (gcloud, its account, the project) and, with --only, the URLs of the workers the
   chosen function sends work to;
2. the database migrations;
3. the APIs, the service accounts and the secrets (values on stdin, never on a command line);
4. with DISPATCH=cloud-tasks, the queue of infra/queues.conf (created or updated) and the IAM bindings
   that let the functions' identity enqueue tasks signed by the tasks identity;
5. the functions of infra/functions.conf, the workers first, since the webhook and sweeper functions are
   deployed with their URLs; after each, its invoker bindings, its kind's webhook settings in the
   database, and its schedules;
6. a summary with the URLs.

Every step creates what is missing and updates what exists: re-running is safe. The cloud side lives in
`planbus.deploy.cloud` and `planbus.deploy.schedules`; this module decides what to run, and in which
order.
"""

from __future__ import annotations

import json
from pathlib import Path

from planbus.deploy.cloud import Cloud
from planbus.deploy.config import Deployment
from planbus.deploy.console import Console, Refusal, Runner
from planbus.deploy.infra import FunctionSpec
from planbus.deploy.kinds import KINDS, RequestKind, kind_of
from planbus.deploy.schedules import schedule
from planbus.migrate import default_migrations_dir


class Plan:
    """One deploy of `deployment`: all its functions, or the one --only names."""

    def __init__(
        self, deployment: Deployment, runner: Runner, work: Path, *, only: str | None, infra: Path
    ) -> None:
        self.d = deployment
        self.runner = runner
        self.console: Console = runner.console
        self.cloud = Cloud(deployment, runner, work)
        self.work = work
        self.selected = self._select(only, infra)
        # target -> URL of each function deployed or found so far (placeholders in a dry run)
        self.urls: dict[str, str] = {}

    def _select(self, only: str | None, infra: Path) -> list[FunctionSpec]:
        deployed = self.d.deployed()
        if only is None:
            return deployed
        target = only.replace("-", "_")
        spec = self.d.spec(target)
        if spec is None:
            names = " ".join(spec.target for spec in self.d.functions)
            raise Refusal(f"--only: no function {target} in {infra}/functions.conf ({names})")
        if spec not in deployed:
            raise Refusal(f"--only: {target} is deployed only with DISPATCH=cloud-tasks")
        return [spec]

    @property
    def dispatches(self) -> bool:
        """Whether this deploy sets up Cloud Tasks: some chosen function may call the LLM."""
        return self.d.dispatch == "cloud-tasks" and any(spec.calls_llm for spec in self.selected)

    def run(self) -> None:
        """Every step, in order; a failed command or a refusal stops the deploy where it is."""
        self.console.note(
            f"project {self.d.project}, region {self.d.region}, scheduler {self.cloud.scheduler}, "
            f"dispatch {self.d.dispatch}, functions: {' '.join(spec.target for spec in self.selected)}"
        )
        self.cloud.prerequisites()
        if self.dispatches:
            self.find_workers()
        self.migrate()
        self.cloud.enable_apis(cloud_tasks=self.dispatches)
        self.cloud.service_accounts(cloud_tasks=self.dispatches)
        self.cloud.secrets(self.selected)
        if self.dispatches:
            self.cloud.queue()
        workers = [spec for spec in self.selected if spec.access == "tasks"]
        sent = {spec.target: self.deploy(spec) for spec in workers}
        for spec in workers:
            # A worker's first deploy goes out before its own URL exists: once it does, again with it.
            if sent[spec.target] != self.worker_urls():
                self.console.step(f"Function {spec.name} again, now with the workers' URLs")
                self.deploy_function(spec)
        for spec in self.selected:
            if spec.access != "tasks":
                self.deploy(spec)
        self.summary()

    def find_workers(self) -> None:
        """The URLs of the workers already deployed. A chosen function that sends work to a worker that
        is neither deployed nor chosen is refused here, before anything changes."""
        self.console.step("Workers already deployed (Cloud Tasks calls them with each request)")
        for kind in KINDS:
            worker = self.d.spec(kind.worker_target)
            assert worker is not None  # config.check requires each worker with Cloud Tasks
            url = self.cloud.existing_url(worker)
            if url is not None:
                self.urls[worker.target] = url
        chosen = {spec.target for spec in self.selected}
        for spec in self.selected:
            for kind in self._sends_to(spec):
                if kind.worker_target not in self.urls and kind.worker_target not in chosen:
                    raise Refusal(
                        f"--only {spec.target}: {kind.worker_target} is not deployed yet, and "
                        f"{spec.target} sends each {kind.name} to it: deploy it first "
                        f"(./deploy.sh --only {kind.worker_target}, or ./deploy.sh)"
                    )

    @staticmethod
    def _sends_to(spec: FunctionSpec) -> tuple[RequestKind, ...]:
        """The kinds whose worker this function enqueues to: its own kind's webhook one; the sweeper all."""
        if not spec.calls_llm or spec.access == "tasks":
            return ()
        kind = kind_of(spec.target)
        return (kind,) if kind is not None else KINDS

    def worker_urls(self) -> dict[str, str]:
        """The workers' URLs known so far, by the variable the dispatching functions read them from."""
        return {
            kind.worker_url_variable: self.urls[kind.worker_target]
            for kind in KINDS
            if kind.worker_target in self.urls
        }

    def migrate(self) -> None:
        self.console.step("Database migrations")
        self.console.command(["planbus", "migrate"])
        if self.runner.dry_run:
            return
        from planbus.migrate import migrate

        applied = migrate(self.cloud.database_url, default_migrations_dir())
        for name in applied:
            self.console.line(f"applied {name}")
        if not applied:
            self.console.line("database is up to date")

    def deploy(self, spec: FunctionSpec) -> dict[str, str]:
        """Deploy one function with what goes with it; returns the worker URLs it went out with."""
        self.console.step(f"Function {spec.name} (target {spec.target})")
        sent = self.deploy_function(spec)
        self.cloud.grant_invoker(spec)
        kind = kind_of(spec.target)
        if kind is not None and spec.target == kind.webhook_target:
            self.webhook(kind, self.urls[spec.target])
        for job in self.d.schedules:
            if job.function == spec.target:
                schedule(self.cloud, job, self.urls[spec.target])
        if spec.access == "tasks" and self.runner.dry_run:
            self.console.note(
                "(on its first deploy it is deployed once more, right after the workers, with the URLs "
                "that exist only once they are deployed)"
            )
        return sent

    def deploy_function(self, spec: FunctionSpec) -> dict[str, str]:
        """`gcloud functions deploy` with the function's environment; returns the worker URLs it got."""
        sent = self.worker_urls()
        environment = self.d.environment(spec, sent)
        env_file = self.work / "env" / f"{spec.target}.json"
        if not self.runner.dry_run:
            env_file.parent.mkdir(mode=0o700, exist_ok=True)
            env_file.write_text(json.dumps(environment, sort_keys=True) + "\n")
        self.cloud.deploy_function(spec, env_file)
        self.console.note(f"environment: {json.dumps(environment, sort_keys=True)}")
        self.urls[spec.target] = self.cloud.read_url(spec)
        return sent

    def webhook(self, kind: RequestKind, url: str) -> None:
        """Store the kind's webhook URL, the secret and its realtime channel where its trigger reads them."""
        self.console.step(f"Database webhook for {kind.table}")
        channel = kind.channel(self.d.variable("REALTIME_CHANNEL"))
        self.console.command(
            ["planbus", "configure", "webhook", f"--kind={kind.name}", f"--url={url}", f"--channel={channel}"]
        )
        if self.runner.dry_run:
            return
        from planbus.deploy.database import configure_webhook

        secret = self.d.values["WEBHOOK_SECRET"]
        for line in configure_webhook(self.cloud.database_url, kind, url, secret, channel).lines():
            self.console.line(line)

    def summary(self) -> None:
        self.console.step("Summary (dry run: nothing was run)" if self.runner.dry_run else "Summary")
        for spec in self.selected:
            self.console.note(f"{spec.target:<22} {self.urls.get(spec.target, '')}")
        chosen = {spec.target for spec in self.selected}
        for job in self.d.schedules:
            if job.function in chosen:
                self.console.note(f"{job.job:<30} {job.schedule} -> {job.function} ({self.cloud.scheduler})")
        for kind in KINDS:
            if kind.webhook_target in chosen:
                self.console.note(
                    f"new {kind.table} rows call {self.urls[kind.webhook_target]} "
                    "(URL and secret stored in the database)"
                )
        if self.dispatches:
            queue = self.d.queue
            self.console.note(
                f"queue {self.d.queue_path}: at most {queue.max_concurrent_dispatches} LLM calls at once, "
                f"{queue.max_dispatches_per_second:g} dispatches a second"
            )
