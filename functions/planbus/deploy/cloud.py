"""The gcloud side of a deploy: each method is one step or one resource, created when missing and updated
when it exists. Flags follow Google's reference for each command (gcloud functions deploy --gen2,
tasks queues create/update, the add-*-policy-binding commands); describe commands decide between create
and update, since the create commands fail on a resource that exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from planbus.deploy.config import Deployment
from planbus.deploy.console import Probe, Refusal, Runner
from planbus.deploy.infra import FunctionSpec

APIS = (
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
)
# gcloud takes the source relative to the repository, and the ignore file relative to the source.
SOURCE = ("--source=functions", "--ignore-file=../infra/gcloudignore")
URI = "--format=value(serviceConfig.uri)"


class Cloud:
    """The Google Cloud steps of one deploy of `deployment`."""

    def __init__(self, deployment: Deployment, runner: Runner, work: Path) -> None:
        self.d = deployment
        self.runner = runner
        self.console = runner.console
        self.work = work
        self.project = deployment.project
        self.region = deployment.region
        self.scheduler = deployment.variable("SCHEDULER")
        self.runtime_account = deployment.variable("GCP_RUNTIME_SERVICE_ACCOUNT")
        self.scheduler_account = deployment.variable("GCP_SCHEDULER_SERVICE_ACCOUNT")
        self.tasks_account = deployment.variable("CLOUD_TASKS_SERVICE_ACCOUNT")
        self.where = [f"--project={self.project}", f"--region={self.region}"]

    @property
    def database_url(self) -> str:
        return self.d.values["DATABASE_URL"]

    def secret_id(self, setting: str) -> str:
        """Its Secret Manager id, e.g. WEBHOOK_SECRET -> planbus-webhook-secret."""
        return f"{self.d.variable('SECRET_PREFIX')}-{setting.lower().replace('_', '-')}"

    def prerequisites(self) -> None:
        self.console.step("Prerequisites")
        dry = self.runner.dry_run
        if not dry and shutil.which(self.runner.gcloud) is None:
            raise Refusal(
                "gcloud is not installed (https://cloud.google.com/sdk/docs/install), "
                "or set GCLOUD to its path"
            )
        accounts = ["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"]
        self.console.command(accounts)
        if not dry:
            status, out, _ = self.runner.output(accounts)
            account = next(iter(out.split()), "") if status == 0 else ""
            if not account:
                raise Refusal("gcloud has no active account: run gcloud auth login")
            self.console.note(f"account: {account}")
        project = ["gcloud", "projects", "describe", self.project, "--format=value(projectId)"]
        self.console.command(project)
        if not dry and self.runner.output(project)[0] != 0:
            raise Refusal(f"project {self.project} does not exist or this account may not see it")

    def enable_apis(self, *, cloud_tasks: bool) -> None:
        self.console.step("APIs")
        apis = list(APIS)
        if self.scheduler == "cloud-scheduler":
            apis.append("cloudscheduler.googleapis.com")
        if cloud_tasks:
            apis.append("cloudtasks.googleapis.com")
        self.runner.run(["gcloud", "services", "enable", *apis, f"--project={self.project}"])

    def service_accounts(self, *, cloud_tasks: bool) -> None:
        self.console.step("Service accounts")
        self._service_account(self.runtime_account, "planbus functions")
        if self.scheduler == "cloud-scheduler":
            self._service_account(self.scheduler_account, "planbus scheduler")
        if cloud_tasks:
            self._service_account(self.tasks_account, "planbus tasks")

    def _service_account(self, email: str, title: str) -> None:
        state = self.runner.probe(
            ["gcloud", "iam", "service-accounts", "describe", email, f"--project={self.project}"]
        )
        if state is Probe.FOUND:
            return
        if not email.endswith(f"@{self.project}.iam.gserviceaccount.com"):
            if state is Probe.MISSING:
                raise Refusal(
                    f"service account {email} does not exist; deploy.sh creates accounts of "
                    f"{self.project} only"
                )
            return
        self.runner.branch(state, "if it does not exist")
        name = email.split("@", 1)[0]
        self.runner.run(
            [
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                name,
                f"--project={self.project}",
                f"--display-name={title}",
            ]
        )

    def secrets(self, functions: list[FunctionSpec]) -> None:
        """Each secret the chosen functions read and the env file sets, once, readable by the functions."""
        self.console.step("Secrets")
        wanted = dict.fromkeys(name for spec in functions for name in spec.secrets if self.d.values.get(name))
        for setting in wanted:
            self._secret(setting)

    def _secret(self, setting: str) -> None:
        secret_id, value = self.secret_id(setting), self.d.values[setting]
        project = f"--project={self.project}"
        state = self.runner.probe(["gcloud", "secrets", "describe", secret_id, project])
        if state is not Probe.MISSING:
            self.runner.branch(state, "if it exists: a new version only when the value changed")
            current = self.work / "current"
            access = ["gcloud", "secrets", "versions", "access", "latest", f"--secret={secret_id}", project]
            access.append(f"--out-file={current}")
            self.console.command(access)
            add = ["gcloud", "secrets", "versions", "add", secret_id, project, "--data-file=-"]
            if self.runner.dry_run:
                self.runner.feed(setting, "", add)
            elif self.runner.output(access)[0] == 0 and current.read_bytes() == value.encode():
                self.console.note(f"{setting}: unchanged")
            else:
                self.runner.feed(setting, value, add)
            current.unlink(missing_ok=True)
        if state is not Probe.FOUND:
            self.runner.branch(state, "if it does not exist")
            self.runner.feed(
                setting,
                value,
                [
                    *("gcloud", "secrets", "create", secret_id, project),
                    *("--replication-policy=automatic", "--labels=app=planbus", "--data-file=-"),
                ],
            )
        self.runner.retry(
            [
                *("gcloud", "secrets", "add-iam-policy-binding", secret_id, project),
                f"--member=serviceAccount:{self.runtime_account}",
                "--role=roles/secretmanager.secretAccessor",
                "--format=none",
            ]
        )

    def queue(self) -> None:
        """The queue every kind shares, with the limits of infra/queues.conf; the functions' identity may
        enqueue on it, with tasks that carry an OIDC token of the tasks identity."""
        spec = self.d.queue
        self.console.step(f"Cloud Tasks queue {spec.queue} ({self.region})")
        where = [f"--location={self.region}", f"--project={self.project}"]
        state = self.runner.probe(
            ["gcloud", "tasks", "queues", "describe", spec.queue, *where, "--format=value(name)"]
        )
        limits = [*where, *spec.flags(), "--format=none"]
        if state is not Probe.MISSING:
            self.runner.branch(state, "if it exists")
            self.runner.run(["gcloud", "tasks", "queues", "update", spec.queue, *limits])
        if state is not Probe.FOUND:
            self.runner.branch(state, "if it does not exist")
            self.runner.run(["gcloud", "tasks", "queues", "create", spec.queue, *limits])
        member = f"--member=serviceAccount:{self.runtime_account}"
        self.runner.retry(
            [
                *("gcloud", "tasks", "queues", "add-iam-policy-binding", spec.queue, *where),
                *(member, "--role=roles/cloudtasks.enqueuer", "--format=none"),
            ]
        )
        # Creating a task that carries the tasks identity's OIDC token needs iam.serviceAccounts.actAs on it.
        self.runner.retry(
            [
                *("gcloud", "iam", "service-accounts", "add-iam-policy-binding", self.tasks_account),
                *(
                    f"--project={self.project}",
                    member,
                    "--role=roles/iam.serviceAccountUser",
                    "--format=none",
                ),
            ]
        )
        self.console.note(
            f"CLOUD_TASKS_QUEUE={self.d.queue_path}: at most {spec.max_concurrent_dispatches} requests "
            f"generating at once across every instance, {spec.max_dispatches_per_second:g} started a second"
        )

    def existing_url(self, spec: FunctionSpec) -> str | None:
        """The URL of a function deployed before (a placeholder in a dry run), or None."""
        state, out = self.runner.describe(["gcloud", "functions", "describe", spec.name, *self.where, URI])
        if state is Probe.UNKNOWN:
            return f"<url of {spec.name}>"
        if state is Probe.MISSING:
            self.console.note(f"{spec.name}: not deployed yet")
            return None
        return self._url(spec, out)

    def read_url(self, spec: FunctionSpec) -> str:
        """The URL of a function just deployed (a placeholder in a dry run)."""
        describe = ["gcloud", "functions", "describe", spec.name, *self.where, URI]
        self.console.command(describe)
        if self.runner.dry_run:
            return f"<url of {spec.name}>"
        status, out, err = self.runner.output(describe)
        if status != 0:
            for line in err.splitlines():
                self.console.line(line)
        return self._url(spec, out if status == 0 else "")

    def _url(self, spec: FunctionSpec, out: str) -> str:
        url = next(iter(out.split()), "")
        if not url.startswith("https://"):
            raise Refusal(f"gcloud gave no https URL for {spec.name}: {url or 'nothing'}")
        self.console.note(f"url: {url}")
        return url

    def deploy_function(self, spec: FunctionSpec, env_file: Path) -> None:
        secrets = [
            f"{name}={self.secret_id(name)}:latest" for name in spec.secrets if self.d.values.get(name)
        ]
        self.runner.run(
            [
                *("gcloud", "functions", "deploy", spec.name, "--gen2", *self.where),
                f"--runtime={spec.runtime}",
                *SOURCE,
                "--serve-all-traffic-latest-revision",
                f"--entry-point={spec.target}",
                "--trigger-http",
                "--no-allow-unauthenticated" if self.private(spec) else "--allow-unauthenticated",
                f"--run-service-account={self.runtime_account}",
                f"--memory={spec.memory}",
                f"--cpu={spec.cpu}",
                f"--timeout={spec.timeout}s",
                f"--concurrency={spec.concurrency}",
                f"--min-instances={spec.min_instances}",
                f"--max-instances={spec.max_instances}",
                f"--env-vars-file={env_file}",
                f"--set-secrets={','.join(secrets)}" if secrets else "--clear-secrets",
            ]
        )

    def private(self, spec: FunctionSpec) -> bool:
        """Whether only one identity may call it: the workers (Cloud Tasks), and the scheduled functions
        when Cloud Scheduler calls them (pg_net cannot sign a request)."""
        return spec.access == "tasks" or (spec.access == "scheduler" and self.scheduler == "cloud-scheduler")

    def grant_invoker(self, spec: FunctionSpec) -> None:
        """roles/run.invoker on a private function for the one identity that calls it."""
        if not self.private(spec):
            return
        account = self.tasks_account if spec.access == "tasks" else self.scheduler_account
        self.runner.retry(
            [
                *("gcloud", "functions", "add-invoker-policy-binding", spec.name, *self.where),
                *(f"--member=serviceAccount:{account}", "--format=none"),
            ]
        )
