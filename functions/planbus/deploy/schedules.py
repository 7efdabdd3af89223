"""The schedules of infra/schedules.conf, through the chosen scheduler (SCHEDULER): Cloud Scheduler jobs,
Supabase Cron (pg_cron) jobs, or none. The other scheduler loses any job of that name, so a move between
them never leaves a double.
"""

from __future__ import annotations

import json

from planbus.deploy.cloud import Cloud
from planbus.deploy.console import Probe
from planbus.deploy.infra import ScheduleSpec


def schedule(cloud: Cloud, job: ScheduleSpec, url: str) -> None:
    """The job calls its function, at `url`, on its schedule."""
    console, runner = cloud.console, cloud.runner
    console.step(f"Schedule {job.job}: {job.schedule} ({cloud.scheduler})")
    where = [f"--project={cloud.project}", f"--location={cloud.region}"]
    state = runner.probe(["gcloud", "scheduler", "jobs", "describe", job.job, *where])
    if cloud.scheduler == "cloud-scheduler":
        _cloud_scheduler_job(cloud, job, url, state)
        return
    if state is not Probe.MISSING:
        runner.branch(state, "if it exists")
        runner.run(["gcloud", "scheduler", "jobs", "delete", job.job, *where])
    from planbus.deploy import database

    if cloud.scheduler == "supabase-cron":
        console.command(
            [
                *("planbus", "configure", "cron", f"--job={job.job}", f"--function={job.function}"),
                *(f"--url={url}", f"--schedule={job.schedule}", f"--body={job.body}"),
                f"--timeout={job.attempt_deadline}",
            ]
        )
        if not runner.dry_run:
            console.line(
                database.schedule_cron(
                    cloud.database_url,
                    job=job.job,
                    function=job.function,
                    function_url=url,
                    schedule=job.schedule,
                    body=job.body,
                    timeout_seconds=job.attempt_deadline,
                    secret=cloud.d.values["WEBHOOK_SECRET"],
                )
            )
    else:
        console.command(["planbus", "configure", "unschedule", f"--job={job.job}"])
        if not runner.dry_run and database.unschedule_cron(cloud.database_url, job.job):
            console.line(f"pg_cron job {job.job!r} removed")


def _cloud_scheduler_job(cloud: Cloud, job: ScheduleSpec, url: str, state: Probe) -> None:
    """Cloud Scheduler calls with an OIDC token of the scheduler account and the shared secret. The secret
    header reaches gcloud through a private --flags-file, not argv; Google keeps it in the job, where
    anyone allowed to view the project's jobs can read it, hence the OIDC token on top: without
    roles/run.invoker on the function, the secret alone does not get a request in."""
    common = [
        f"--project={cloud.project}",
        f"--location={cloud.region}",
        f"--schedule={job.schedule}",
        f"--time-zone={job.time_zone}",
        f"--uri={url}",
        "--http-method=post",
        f"--message-body={job.body}",
        f"--attempt-deadline={job.attempt_deadline}s",
        "--max-retry-attempts=0",
        f"--description=planbus: calls {job.function}",
        f"--oidc-service-account-email={cloud.scheduler_account}",
        f"--oidc-token-audience={url}",
        "--format=none",
    ]
    # update when it exists, create when it does not; a dry run shows both
    for verb, flag, skip_when in (
        ("update", "--update-headers", Probe.MISSING),
        ("create", "--headers", Probe.FOUND),
    ):
        if state is skip_when:
            continue
        cloud.runner.branch(state, "if it exists" if verb == "update" else "if it does not exist")
        flags = cloud.work / f"{job.job}.{verb}.json"
        if not cloud.runner.dry_run:
            secret = cloud.d.values["WEBHOOK_SECRET"]
            headers = {"Content-Type": "application/json", "X-Webhook-Secret": secret}
            flags.write_text(json.dumps({flag: headers}) + "\n")
        cloud.runner.run(
            ["gcloud", "scheduler", "jobs", verb, "http", job.job, *common, f"--flags-file={flags}"]
        )
    cloud.console.note("(flags file: headers Content-Type: application/json, X-Webhook-Secret: ***)")
