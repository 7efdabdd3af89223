"""Fault drill: N requests through a hostile delivery, two worker crashes and a database restart; then a
database outage.

On a PostgreSQL of its own (it is stopped and started), with the LLM a fake OpenAI-compatible server that
always answers (after a short latency) and counts its calls:
- requests are inserted as a Poisson stream; the Deliverer hears each insert where the trigger publishes
  it and delivers its webhook 3 times within a second, except 10% it never delivers (pg_net sends at
  most once and never retries, so a delivery refused by a dead worker or answered 503 is lost too);
- at a quarter of the inserts the worker's server is SIGKILLed (its whole process group: a crashed
  instance) and started again, at a half PostgreSQL is restarted, at three quarters the worker is killed
  again; the Mini App's inserts that fail while the database is down are retried until they succeed;
- the sweeper is called as the scheduler would, compressed in time (LEASE_SECONDS, LOST_WEBHOOK_SECONDS
  and the schedule are seconds instead of minutes).
Checked: every request ends completed; LLM calls beyond N only for attempts that were lost (each attempt
makes at most one call); exactly one reminder per plan step; how long inserts and requests waited
around the restart; how long the queue took to drain after the last insert.
Then the outage: a prober posts webhooks (for unknown ids, answered `skipped` when all is well) one
after another while PostgreSQL is stopped for a while and started again: how long each 503 takes, and
from the database being ready to the first 200.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from typing import Any

import data
import psycopg
import serverside
import targets
from drivers import Deliverer, OwnServer, Prober, Sweeper, own_postgres
from harness import Check, Column, Context, Result, Table, spread
from scratch import scratch_database
from servers import FunctionServer, running

from support.fake_llm import FakeLLM


def insert_stream(url: str, people: list[data.Requester], rate: float, events: dict[int, Any]) -> list[float]:
    """Insert one request per person at Poisson-spaced moments, running events[i] (in a thread) before the
    i-th insert; an insert the database refuses is retried until it succeeds. Returns how long each
    insert waited for the database, in seconds."""
    rng = random.Random(3)
    waits = []
    conn: psycopg.Connection[Any] | None = None
    next_at = time.monotonic()
    for index, person in enumerate(people):
        if index in events:
            threading.Thread(target=events[index], daemon=True).start()
        next_at += rng.expovariate(rate)
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        began = time.monotonic()
        while True:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
                conn.execute(
                    targets.mini_app_insert(targets.REQUESTS_TABLE, person.lead_id, person.telegram_id)
                )
                break
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
        waits.append(time.monotonic() - began)
    if conn is not None:
        conn.close()
    return waits


def finished(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = ANY(%s)), count(*) FROM public.plan_requests",
            (list(targets.FINISHED),),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def restart(pg: OwnServer, window: dict[str, float]) -> None:
    window["stopping"] = time.monotonic()
    pg.stop()
    window["down"] = time.monotonic()
    pg.start()
    window["ready"] = time.monotonic()


def crash(server: FunctionServer, moments: list[float]) -> None:
    moments.append(time.monotonic())
    server.kill()
    server.start()


def run(ctx: Context) -> Result:
    n = ctx.size.pick(1000, 40, 16)
    # Slow enough that the worker is back from one crash (a few seconds) before the next fault.
    rate = ctx.size.pick(20.0, 10.0, 8.0)
    lease = ctx.size.pick(8, 6, 4)
    sweep_every = ctx.size.pick(3.0, 2.0, 1.0)
    outage = ctx.size.pick(40.0, 10.0, 3.0)
    settings = {
        "plan_generator": "openai",
        "openai_api_key": "sk-bench",
        "openai_timeout": lease - 2,
        # The lease must outlive every kind's LLM call, drafts included (the settings refuse otherwise).
        "draft_openai_timeout": lease - 2,
        "lease_seconds": lease,
        "lost_webhook_seconds": ctx.size.pick(5, 3, 2),
        "function_budget_seconds": ctx.size.pick(20, 10, 5),
    }
    fake = FakeLLM(latency=0.1, seed=21).start()
    settings["openai_base_url"] = fake.base_url
    kills: list[float] = []
    window: dict[str, float] = {}
    try:
        with (
            own_postgres() as pg,
            scratch_database(pg.url) as url,
            psycopg.connect(url, autocommit=True) as conn,
        ):
            serverside.install(conn)
            serverside.watch_transitions(conn, targets.REQUESTS_TABLE)
            people = data.requesters(conn, n, telegram_base=8_000_000)
            conn.close()
            sweeper = targets.server(targets.SWEEPER_TARGET, url, ctx.artifact("sweeper.log"), **settings)
            log_dir = ctx.artifact("logs/.keep").parent
            with (
                targets.request_path(url, log_dir, **settings) as path,
                running(sweeper),
                Sweeper(sweeper.url, sweep_every) as schedule,
            ):
                events = {
                    n // 4: lambda: crash(path.worker, kills),
                    n // 2: lambda: restart(pg, window),
                    3 * n // 4: lambda: crash(path.worker, kills),
                }
                with Deliverer(url, path.webhook_url, copies=3, drop=0.1, seed=5) as deliverer:
                    began = time.monotonic()
                    waits = insert_stream(url, people, rate, events)
                    last_insert = time.monotonic()
                    deadline = last_insert + ctx.size.pick(300, 120, 60)
                    done = 0
                    while time.monotonic() < deadline:
                        with contextlib.suppress(psycopg.OperationalError):
                            done, _ = finished(url)
                        if done >= n:
                            break
                        time.sleep(0.2)
                    drained = time.monotonic()
                drill = summarise(url, n, fake, deliverer, waits, window, kills, began, last_insert, drained)
                probes = outage_drill(pg, path.webhook_url, outage)
            sweeps = {"calls": schedule.calls, "answers": dict(schedule.answers)}
    finally:
        fake.stop()

    checks = [
        Check("requests completed", float(drill["completed"]), "==", float(n), "must", ""),
        Check(
            "LLM calls beyond N, at most the attempts beyond the first",
            float(drill["llm_calls"] - n),
            "<=",
            float(drill["extra_attempts"]),
            "must",
            "",
        ),
        Check("duplicate reminders", float(drill["reminder_duplicates"]), "==", 0.0, "must", ""),
        Check("missing reminders", float(drill["reminder_missing"]), "==", 0.0, "must", ""),
        Check("outage: answers other than 200 and 503", float(probes["other"]), "==", 0.0, "must", ""),
    ]
    return Result(
        title="fault drill: duplicates, drops, crashes and a database restart; then an outage",
        about=__doc__ or "",
        params={
            "requests": n,
            "arrivals_per_second": rate,
            "settings": {k: v for k, v in settings.items() if k != "openai_base_url"},
            "sweep_every_seconds": sweep_every,
            "outage_seconds": outage,
            "sweeper": sweeps,
        },
        tables=[drill_table(drill), latency_table(drill), outage_table(probes, outage)],
        checks=checks,
    )


def summarise(
    url: str,
    n: int,
    fake: FakeLLM,
    deliverer: Deliverer,
    waits: list[float],
    window: dict[str, float],
    kills: list[float],
    began: float,
    last_insert: float,
    drained: float,
) -> dict[str, Any]:
    wall_now, mono_now = time.time(), time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        statuses: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM public.plan_requests GROUP BY 1").fetchall()
        )
        attempts = conn.execute("SELECT coalesce(sum(attempts), 0) FROM public.plan_requests").fetchone()
        reminders = conn.execute(
            """
            SELECT coalesce(sum(greatest(have - steps, 0)), 0), coalesce(sum(greatest(steps - have, 0)), 0)
              FROM (SELECT jsonb_array_length(p.result -> 'plan' -> 'steps') AS steps,
                           (SELECT count(*) FROM public.reminders m WHERE m.plan_request_id = p.id) AS have
                      FROM public.plan_requests p WHERE p.status = 'completed') per_plan
            """
        ).fetchone()
        lost: dict[str, int] = dict(
            conn.execute(
                "SELECT CASE WHEN starts_with(message, %s) THEN 'lease expired' ELSE 'other' END, "
                f"count(*) FROM {targets.ERRORS_TABLE} WHERE {targets.ERRORS_OF_KIND} GROUP BY 1",
                (targets.LEASE_EXPIRED,),
            ).fetchall()
        )
        rows = conn.execute(
            f"""
            SELECT extract(epoch FROM r.created_at)::float,
                   extract(epoch FROM d.at - r.created_at)::float * 1000
              FROM {targets.REQUESTS_TABLE} r
              JOIN LATERAL (SELECT min(at) AS at FROM bench.transitions t
                             WHERE t.id = r.id AND t.status = %s) d ON d.at IS NOT NULL
            """,
            (targets.COMPLETED,),
        ).fetchall()
    assert attempts is not None and reminders is not None
    to_mono = mono_now - wall_now  # server clock (same machine) to this process's monotonic clock
    latencies = [ms for _, ms in rows]
    around = []
    if "stopping" in window:
        around = [
            ms for created, ms in rows if window["stopping"] - 5 <= created + to_mono <= window["ready"] + 5
        ]
    during = [
        answer
        for sent, _, answer in deliverer.log
        if window and window["stopping"] <= sent <= window.get("ready", 0) + 1
    ]
    return {
        "completed": int(statuses.get("completed", 0)),
        "statuses": statuses,
        "llm_calls": sum(fake.calls.values()),
        "extra_attempts": int(attempts[0]) - n,
        "lost_attempts": int(lost.get("lease expired", 0)),
        "reminder_duplicates": int(reminders[0]),
        "reminder_missing": int(reminders[1]),
        "published": deliverer.published,
        "dropped": deliverer.dropped,
        "answers": dict(deliverer.answers),
        "answers_during_restart": {a: during.count(a) for a in sorted(set(during))},
        "insert_wait_max": max(waits) if waits else 0.0,
        "inserts_waiting": sum(1 for w in waits if w > 0.5),
        "restart_down": window.get("ready", 0) - window.get("stopping", 0),
        "kills": len(kills),
        "latencies": latencies,
        "around_restart": around,
        "insert_seconds": last_insert - began,
        "drain_seconds": drained - last_insert,
    }


def drill_table(d: dict[str, Any]) -> Table:
    table = Table("the drill", [Column("value", "")])
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(d["answers"].items()))
    restart = ", ".join(f"{k}: {v}" for k, v in d["answers_during_restart"].items()) or "none"
    for label, value, unit in (
        ("requests completed", d["completed"], ""),
        ("webhooks published / never delivered", f"{d['published']} / {d['dropped']}", ""),
        ("deliveries answered", answers, ""),
        ("deliveries during the restart", restart, ""),
        ("worker SIGKILLs / PostgreSQL restarts", f"{d['kills']} / 1", ""),
        ("LLM calls", d["llm_calls"], ""),
        ("attempts beyond the first (lease expired)", f"{d['extra_attempts']} ({d['lost_attempts']})", ""),
        ("duplicate / missing reminders", f"{d['reminder_duplicates']} / {d['reminder_missing']}", ""),
        ("PostgreSQL down (stop → ready)", d["restart_down"], "s"),
        (
            "longest wait of an insert / inserts that waited",
            f"{d['insert_wait_max']:.1f} s / {d['inserts_waiting']}",
            "",
        ),
        ("inserting took", d["insert_seconds"], "s"),
        ("drain after the last insert", d["drain_seconds"], "s"),
    ):
        table.add_in(unit, label, value=value)
    return table


def latency_table(d: dict[str, Any]) -> Table:
    table = Table(
        "insert → completed during the drill",
        [
            Column("requests", "requests"),
            Column("p50", "p50", "ms"),
            Column("p95", "p95", "ms"),
            Column("p99", "p99", "ms"),
            Column("max", "max", "ms"),
        ],
    )
    table.add("every request", requests=len(d["latencies"]), **spread(d["latencies"]))
    table.add(
        "inserted within 5 s of the restart", requests=len(d["around_restart"]), **spread(d["around_restart"])
    )
    return table


def outage_drill(pg: OwnServer, url: str, seconds: float, probers: int = 3) -> dict[str, Any]:
    """Probe the webhook from `probers` clients through a stop of `seconds` and a start of the database."""

    def body() -> dict[str, Any]:
        return targets.webhook_body({"id": str(uuid.uuid4())})

    clients = [Prober(url, body, timeout=90) for _ in range(probers)]
    with contextlib.ExitStack() as stack:
        for client in clients:
            stack.enter_context(client)
            time.sleep(0.3)
        time.sleep(1.5)
        stopping = time.monotonic()
        pg.stop()
        down = time.monotonic()
        time.sleep(seconds)
        pg.start()
        ready = time.monotonic()
        deadline = ready + 90
        while any(c.first_after(ready, "200") is None for c in clients) and time.monotonic() < deadline:
            time.sleep(0.1)
    log = sorted(entry for client in clients for entry in client.log)
    refusals = [answered - sent for sent, answered, answer in log if answer == "503"]
    first_503 = min(
        (answered for _, answered, answer in log if answered > stopping and answer == "503"), default=None
    )
    first_200 = min(
        (answered for _, answered, answer in log if answered > ready and answer == "200"), default=None
    )
    return {
        "stop_seconds": down - stopping,
        "probes_during": sum(1 for sent, _, _ in log if stopping <= sent <= ready),
        "refusals": refusals,
        "first_503": None if first_503 is None else first_503 - stopping,
        "ready_to_200": None if first_200 is None else first_200 - ready,
        "other": sum(1 for _, _, answer in log if answer not in ("200", "503")),
        "answers": sorted({answer for _, _, answer in log}),
    }


def outage_table(p: dict[str, Any], seconds: float) -> Table:
    table = Table(
        f"a {seconds:g} s outage (PostgreSQL stopped, then started), webhooks probed one after another",
        [Column("value", "")],
    )
    spread_503 = spread([r * 1000 for r in p["refusals"]])
    table.add("answers seen", value=", ".join(p["answers"]))
    table.add("503s / probes sent while down", value=f"{len(p['refusals'])} / {p['probes_during']}")
    table.add_in("ms", "time to each 503: p50", value=spread_503["p50"])
    table.add_in("ms", "time to each 503: max", value=spread_503["max"])
    table.add_in("s", "from the stop to the first 503", value=p["first_503"])
    table.add_in("s", "from the database ready to the first 200", value=p["ready_to_200"])
    return table
