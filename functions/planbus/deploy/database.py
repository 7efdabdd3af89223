"""Point the database at the deployed functions (`planbus deploy`, and `planbus configure` by hand).

- The webhooks, one per request kind: its function's URL, the shared secret and its realtime channel are
  stored with `planbus_store_setting` (Vault where it exists, else planbus_private.settings) under the
  kind's names (`webhook_url_plan`, `realtime_channel_plan`), where the trigger reads them at run time.
  On InsForge, whose trigger path is `realtime.publish`, the kind's channel gets the function's URL as
  its webhook URL; InsForge cannot send custom headers, so that URL carries the secret as `?token=`.
- Supabase Cron (SCHEDULER=supabase-cron): one pg_cron job per schedule calling `net.http_post`. The job's
  text names the settings to read (function URL, secret), never their values, so rotating the secret is
  one stored setting and `cron.job` shows nothing worth stealing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from planbus.db.postgres import translate
from planbus.deploy.kinds import RequestKind
from planbus.errors import ConfigurationError

Delivery = Literal["pg_net", "realtime", "notify"]

_CAPABILITIES = """
SELECT
  EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'net' AND p.proname = 'http_post') AS pg_net,
  EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'realtime' AND p.proname = 'publish') AS realtime_publish,
  (SELECT count(*) = 2 FROM pg_attribute
    WHERE attrelid = to_regclass('realtime.channels') AND attname IN ('pattern', 'webhook_urls')
      AND NOT attisdropped) AS insforge_channels,
  to_regprocedure('cron.schedule(text,text,text)') IS NOT NULL AS pg_cron
"""

_STORE = "SELECT public.planbus_store_setting(p_name => %s, p_value => %s) ->> 'stored'"

# Our URL replaces any earlier one of ours (an old token after a rotation); other subscribers stay.
_CHANNEL = """
INSERT INTO realtime.channels (pattern, description, webhook_urls, enabled)
VALUES (%(channel)s, %(description)s, ARRAY[%(url)s], true)
ON CONFLICT (pattern) DO UPDATE
   SET webhook_urls = ARRAY(SELECT u FROM unnest(coalesce(realtime.channels.webhook_urls, '{}')) AS u
                             WHERE split_part(u, '?', 1) <> %(base)s) || %(url)s,
       enabled = true
"""

# The function's URL leaves every other channel (the one it was on before the channels had the kind in
# their name, say), so no event reaches it twice.
_LEAVE_OTHER_CHANNELS = """
UPDATE realtime.channels
   SET webhook_urls = ARRAY(SELECT u FROM unnest(webhook_urls) AS u WHERE split_part(u, '?', 1) <> %(base)s)
 WHERE pattern <> %(channel)s
   AND EXISTS (SELECT 1 FROM unnest(webhook_urls) AS u WHERE split_part(u, '?', 1) = %(base)s)
"""

_CRON_COMMAND = sql.SQL(
    "SELECT net.http_post(url := planbus_private.setting({url_setting}), body := {body}::jsonb, "
    "headers := jsonb_build_object('Content-Type', 'application/json', "
    "'X-Webhook-Secret', planbus_private.setting('webhook_secret')), timeout_milliseconds := {timeout})"
)


@dataclass(frozen=True)
class WebhookReport:
    """Where the settings went and how the trigger will deliver new requests of the kind."""

    table: str
    stored_in: str
    delivery: Delivery
    channel: str | None

    def lines(self) -> list[str]:
        """What `planbus configure webhook` prints: never a secret."""
        out = [f"webhook URL and secret for {self.table} stored in {self.stored_in}"]
        if self.delivery == "pg_net":
            out.append(f"new {self.table} rows are posted by pg_net with the X-Webhook-Secret header")
        elif self.delivery == "realtime":
            out.append(f"new {self.table} rows are published to the realtime channel {self.channel!r}")
        else:
            out.append(
                f"WARNING: this database has neither pg_net nor realtime.publish: new {self.table} rows "
                "reach the functions only through reset_stale_requests, after LOST_WEBHOOK_SECONDS"
            )
        if self.channel is not None:
            out.append(f"realtime channel {self.channel!r} delivers to the function URL with ?token=***")
        return out


def token_url(url: str, secret: str) -> str:
    """The URL with the secret as `?token=`, for callers that cannot send headers (InsForge)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": secret})) if q)
    return urlunsplit(parts._replace(query=query))


def configure_webhook(
    database_url: str, kind: RequestKind, webhook_url: str, secret: str, channel: str
) -> WebhookReport:
    """Store the kind's webhook URL, the secret and the kind's realtime channel; on InsForge, point that
    channel at the function."""
    _require_https(webhook_url)
    with _connect(database_url) as conn, conn.transaction():
        caps = _capabilities(conn)
        stored = {
            _store(conn, name, value) for name, value in _webhook_settings(kind, webhook_url, secret, channel)
        }
        configured_channel = None
        if caps["insforge_channels"]:
            params = {
                "channel": channel,
                "description": f"planbus: new {kind.table} rows for {kind.webhook_target}",
                "url": token_url(webhook_url, secret),
                "base": webhook_url,
            }
            conn.execute(_CHANNEL, params)
            conn.execute(_LEAVE_OTHER_CHANNELS, params)
            configured_channel = channel
    delivery: Delivery = "pg_net" if caps["pg_net"] else "realtime" if caps["realtime_publish"] else "notify"
    return WebhookReport(kind.table, " and ".join(sorted(stored)), delivery, configured_channel)


def _webhook_settings(
    kind: RequestKind, webhook_url: str, secret: str, channel: str
) -> list[tuple[str, str]]:
    names = [
        (kind.webhook_url_setting, webhook_url),
        ("webhook_secret", secret),
        (kind.channel_setting, channel),
    ]
    if kind.unsuffixed_settings:
        names += [("webhook_url", webhook_url), ("realtime_channel", channel)]
    return names


def schedule_cron(
    database_url: str,
    *,
    job: str,
    function: str,
    function_url: str,
    schedule: str,
    body: str,
    timeout_seconds: int,
    secret: str,
) -> str:
    """Create or replace the pg_cron job `job` (pg_cron replaces a job of the same name)."""
    _require_https(function_url)
    if not isinstance(json.loads(body), dict):
        raise ConfigurationError(f"the body of {job} must be a JSON object")
    with _connect(database_url) as conn, conn.transaction():
        caps = _capabilities(conn)
        if not (caps["pg_cron"] and caps["pg_net"]):
            raise ConfigurationError(
                "SCHEDULER=supabase-cron needs the pg_cron and pg_net extensions: enable both "
                "(Supabase dashboard: Database, Extensions), or use SCHEDULER=cloud-scheduler"
            )
        url_setting = f"function_url_{function}"
        _store(conn, url_setting, function_url)
        _store(conn, "webhook_secret", secret)
        command = _CRON_COMMAND.format(
            url_setting=sql.Literal(url_setting),
            body=sql.Literal(body),
            timeout=sql.Literal(timeout_seconds * 1000),
        ).as_string(conn)
        conn.execute("SELECT cron.schedule(%s, %s, %s)", (job, schedule, command))
    return f"pg_cron job {job!r} calls {function} on {schedule!r}"


def unschedule_cron(database_url: str, job: str) -> bool:
    """Remove the pg_cron job `job` if there is one (the schedules moved to another scheduler)."""
    with _connect(database_url) as conn:
        if not _capabilities(conn)["pg_cron"]:
            return False
        rows = conn.execute(
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (job,)
        ).fetchall()
    return bool(rows)


def _require_https(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"a function URL must be https:// without a query, not {url!r}")


def _connect(database_url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(database_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise translate(exc) from exc


def _capabilities(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    row = conn.execute(_CAPABILITIES).fetchone()
    assert row is not None
    return dict(zip(("pg_net", "realtime_publish", "insforge_channels", "pg_cron"), row, strict=True))


def _store(conn: psycopg.Connection[Any], name: str, value: str) -> str:
    try:
        row = conn.execute(_STORE, (name, value)).fetchone()
    except psycopg.errors.UndefinedFunction as exc:
        raise ConfigurationError("planbus_store_setting is missing: run `planbus migrate` first") from exc
    except psycopg.Error as exc:
        raise translate(exc, f"storing {name}") from exc
    assert row is not None
    return str(row[0])
