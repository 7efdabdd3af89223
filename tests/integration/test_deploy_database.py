"""`planbus configure`'s database side: each kind's webhook settings its trigger reads, InsForge's realtime
channels, and Supabase Cron jobs. InsForge's realtime schema and Supabase's pg_cron/pg_net do not exist
on the test server: tests/fakes/*.sql stand in for them with their real table and function signatures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from planbus.cli import main as planbus
from planbus.deploy.database import configure_webhook, schedule_cron, token_url, unschedule_cron
from planbus.deploy.kinds import KINDS
from planbus.errors import ConfigurationError
from planbus.settings import get_settings

FAKES = Path(__file__).resolve().parents[1] / "fakes"
URL = "https://handle-plan-request-fake123-ew.a.run.app"
DRAFT_URL = "https://handle-draft-request-fake123-ew.a.run.app"
SECRET = "s" * 20 + "-rotation-1-" + "t" * 20
PLAN, DRAFT = KINDS


def install(database_url: str, fake: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute((FAKES / fake).read_text().encode())


WEBHOOK_SETTINGS = (
    "webhook_url",
    "webhook_secret",
    "realtime_channel",
    *(name for kind in KINDS for name in (kind.webhook_url_setting, kind.channel_setting)),
)


def settings_table(sql: psycopg.Connection[dict[str, Any]]) -> dict[str, str]:
    """The webhook's rows of planbus_private.settings (other settings live there too)."""
    rows = sql.execute(
        "SELECT name, value FROM planbus_private.settings WHERE name = ANY(%s)", (list(WEBHOOK_SETTINGS),)
    )
    return {row["name"]: row["value"] for row in rows}


def test_the_webhook_url_and_secret_are_stored_where_the_trigger_reads_them(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    report = configure_webhook(database_url, PLAN, URL, SECRET, "planbus-plan")
    assert settings_table(sql) == {
        "webhook_url_plan": URL,
        "realtime_channel_plan": "planbus-plan",
        "webhook_secret": SECRET,
        # what migration 0006's trigger on plan_requests reads
        "webhook_url": URL,
        "realtime_channel": "planbus-plan",
    }
    read = sql.execute("SELECT planbus_private.setting('webhook_secret') AS value").fetchone()
    assert read == {"value": SECRET}
    assert report.delivery == "notify"
    assert any(
        "WARNING: this database has neither pg_net nor realtime.publish: new plan_requests rows" in line
        for line in report.lines()
    )


def test_a_second_kind_gets_its_own_settings_beside_the_first(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    configure_webhook(database_url, PLAN, URL, SECRET, "planbus-plan")
    report = configure_webhook(database_url, DRAFT, DRAFT_URL, SECRET, "planbus-draft")
    stored = settings_table(sql)
    assert (stored["webhook_url_draft"], stored["realtime_channel_draft"]) == (DRAFT_URL, "planbus-draft")
    assert (stored["webhook_url"], stored["webhook_url_plan"]) == (URL, URL)
    assert report.lines()[0] == "webhook URL and secret for draft_requests stored in settings"


def test_configuring_twice_keeps_one_row_per_setting_with_the_latest_value(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    configure_webhook(database_url, PLAN, URL, SECRET, "planbus-plan")
    configure_webhook(database_url, PLAN, URL, SECRET.replace("1", "2"), "planbus-plan")
    assert settings_table(sql)["webhook_secret"] == SECRET.replace("1", "2")
    count = sql.execute(
        "SELECT count(*) AS n FROM planbus_private.settings WHERE name = ANY(%s)", (list(WEBHOOK_SETTINGS),)
    ).fetchone()
    assert count == {"n": 5}


def test_insforge_channel_gets_the_function_url_with_the_token_and_keeps_other_subscribers(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    install(database_url, "insforge_realtime.sql")
    sql.execute(
        "INSERT INTO realtime.channels (pattern, webhook_urls) "
        "VALUES ('planbus-plan', ARRAY['https://audit.example/hook'])"
    )
    report = configure_webhook(database_url, PLAN, URL, SECRET, "planbus-plan")
    rotated = SECRET.replace("1", "2")
    configure_webhook(database_url, PLAN, URL, rotated, "planbus-plan")
    row = sql.execute(
        "SELECT webhook_urls, enabled FROM realtime.channels WHERE pattern = 'planbus-plan'"
    ).fetchone()
    assert row == {"webhook_urls": ["https://audit.example/hook", f"{URL}?token={rotated}"], "enabled": True}
    assert report.delivery == "realtime"
    assert SECRET not in "\n".join(report.lines())
    assert "?token=***" in "\n".join(report.lines())


def test_a_plan_request_on_insforge_is_published_to_the_configured_channel(
    database_url: str,
    sql: psycopg.Connection[dict[str, Any]],
    make_lead: Callable[..., dict[str, Any]],
    make_request: Callable[..., dict[str, Any]],
) -> None:
    install(database_url, "insforge_realtime.sql")
    configure_webhook(database_url, PLAN, URL, SECRET, "planbus-prod")
    request = make_request(make_lead())
    published = sql.execute("SELECT channel, payload FROM realtime.published").fetchall()
    assert [row["channel"] for row in published] == ["planbus-prod"]
    assert published[0]["payload"]["record"]["id"] == str(request["id"])
    channel = sql.execute(
        "SELECT webhook_urls FROM realtime.channels WHERE pattern = 'planbus-prod'"
    ).fetchone()
    assert channel == {"webhook_urls": [f"{URL}?token={SECRET}"]}


def test_each_kind_s_function_leaves_the_channels_it_was_on_before(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    """Before the channels carried the kind, the plan function was on the channel named REALTIME_CHANNEL."""
    install(database_url, "insforge_realtime.sql")
    sql.execute(
        "INSERT INTO realtime.channels (pattern, webhook_urls) "
        "VALUES ('planbus', ARRAY['https://audit.example/hook', %s])",
        (f"{URL}?token=old",),
    )
    configure_webhook(database_url, PLAN, URL, SECRET, "planbus-plan")
    configure_webhook(database_url, DRAFT, DRAFT_URL, SECRET, "planbus-draft")
    channels = dict(
        (row["pattern"], row["webhook_urls"])
        for row in sql.execute("SELECT pattern, webhook_urls FROM realtime.channels")
    )
    assert channels == {
        "planbus": ["https://audit.example/hook"],
        "planbus-plan": [f"{URL}?token={SECRET}"],
        "planbus-draft": [f"{DRAFT_URL}?token={SECRET}"],
    }
    described = sql.execute(
        "SELECT description FROM realtime.channels WHERE pattern = 'planbus-draft'"
    ).fetchone()
    assert described == {"description": "planbus: new draft_requests rows for handle_draft_request"}


def test_the_token_is_url_encoded_and_added_to_an_existing_query() -> None:
    assert token_url(URL, "a b&c") == f"{URL}?token=a+b%26c"
    assert token_url(f"{URL}?x=1", "k") == f"{URL}?x=1&token=k"


@pytest.mark.parametrize("url", ["http://plain.example/f", f"{URL}?token=already", "not a url"])
def test_a_function_url_must_be_https_without_a_query(database_url: str, url: str) -> None:
    with pytest.raises(ConfigurationError, match="https://"):
        configure_webhook(database_url, PLAN, url, SECRET, "planbus-plan")


def test_configuring_an_unmigrated_database_says_to_migrate_first(fresh_database: Callable[..., str]) -> None:
    with pytest.raises(ConfigurationError, match="run `planbus migrate` first"):
        configure_webhook(fresh_database(), PLAN, URL, SECRET, "planbus-plan")


def test_cron_jobs_read_the_url_and_secret_at_run_time(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    install(database_url, "pg_cron_and_pg_net.sql")
    function_url = "https://send-due-reminders-fake123-ew.a.run.app"
    message = schedule_cron(
        database_url,
        job="planbus-send-due-reminders",
        function="send_due_reminders",
        function_url=function_url,
        schedule="* * * * *",
        body='{"limit": 50}',
        timeout_seconds=120,
        secret=SECRET,
    )
    assert "planbus-send-due-reminders" in message
    job = sql.execute("SELECT jobname, schedule, command FROM cron.job").fetchone()
    assert job is not None and job["schedule"] == "* * * * *"
    assert SECRET not in job["command"] and function_url not in job["command"]
    rotated = SECRET.replace("1", "2")
    configure_webhook(database_url, PLAN, URL, rotated, "planbus-plan")
    sql.execute(job["command"])
    sent = sql.execute("SELECT url, body, headers, timeout_milliseconds FROM net.requests").fetchone()
    assert sent == {
        "url": function_url,
        "body": {"limit": 50},
        "headers": {"Content-Type": "application/json", "X-Webhook-Secret": rotated},
        "timeout_milliseconds": 120_000,
    }


def test_scheduling_a_job_again_replaces_it_and_unscheduling_removes_only_that_job(
    database_url: str, sql: psycopg.Connection[dict[str, Any]]
) -> None:
    install(database_url, "pg_cron_and_pg_net.sql")
    sql.execute("SELECT cron.schedule('someone-elses-job', '0 3 * * *', 'SELECT 1')")
    for schedule in ("* * * * *", "*/2 * * * *"):
        schedule_cron(
            database_url,
            job="planbus-reset-stale-requests",
            function="reset_stale_requests",
            function_url="https://reset-stale-requests-fake123-ew.a.run.app",
            schedule=schedule,
            body="{}",
            timeout_seconds=180,
            secret=SECRET,
        )
    jobs = {row["jobname"]: row["schedule"] for row in sql.execute("SELECT jobname, schedule FROM cron.job")}
    assert jobs == {"someone-elses-job": "0 3 * * *", "planbus-reset-stale-requests": "*/2 * * * *"}
    assert unschedule_cron(database_url, "planbus-reset-stale-requests") is True
    assert unschedule_cron(database_url, "planbus-reset-stale-requests") is False
    assert [row["jobname"] for row in sql.execute("SELECT jobname FROM cron.job")] == ["someone-elses-job"]


def test_supabase_cron_without_pg_cron_and_pg_net_is_refused_clearly(database_url: str) -> None:
    with pytest.raises(ConfigurationError, match="needs the pg_cron and pg_net extensions"):
        schedule_cron(
            database_url,
            job="j",
            function="send_due_reminders",
            function_url="https://send-due-reminders-fake123-ew.a.run.app",
            schedule="* * * * *",
            body="{}",
            timeout_seconds=60,
            secret=SECRET,
        )
    assert unschedule_cron(database_url, "j") is False


def test_the_command_reads_database_url_and_secret_from_the_settings(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sql: psycopg.Connection[dict[str, Any]],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    assert planbus(["configure", "webhook", "--kind=draft", f"--url={DRAFT_URL}"]) == 0
    stored = settings_table(sql)
    assert (stored["webhook_url_draft"], stored["realtime_channel_draft"]) == (DRAFT_URL, "planbus-draft")
    assert SECRET not in capsys.readouterr().out
    monkeypatch.delenv("WEBHOOK_SECRET")
    get_settings.cache_clear()
    assert planbus(["configure", "webhook", "--kind=plan", f"--url={URL}"]) == 1
    assert "WEBHOOK_SECRET is not set" in capsys.readouterr().err
    assert settings_table(sql)["webhook_secret"] == SECRET
