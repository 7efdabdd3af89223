"""The Mini App's insert: server time of one request, as PostgREST runs it, against a bare insert.

Each insert is its own transaction, as a PostgREST call is: the role and JWT claims are set, the row is
inserted, the transaction commits. The server times it with clock_timestamp() (bench.time_transactions):
its statements, the triggers' work included, and separately with the COMMIT, which on a server with
fsync on is mostly the WAL flush. Neither the client nor the network is in either figure. The baseline
inserts into bench.bare_requests, a table of the same shape with no trigger, no foreign key and no
row-level security. Two more rows switch planbus's triggers off one at a time, which
apportions the difference between row-level security with the foreign key, the daily limit and the
webhook. Variants alternate in rounds, so a busy spell of the machine spreads over all of them.
"""

from __future__ import annotations

from typing import Any

import bare
import data
import psycopg
import serverside
import targets
from harness import Check, Column, Context, Result, Table, percentile, ratio

BASELINE = "bare insert (same shape, no triggers)"
PLANBUS = "planbus: Mini App insert"


def variants() -> dict[str, tuple[str, tuple[str, ...]]]:
    """label -> (table, planbus triggers switched off)."""
    webhook, daily_limit = targets.INSERT_TRIGGERS
    return {
        BASELINE: (bare.TABLE, ()),
        PLANBUS: (targets.REQUESTS_TABLE, ()),
        f"planbus without {targets.INSERT_TRIGGERS[webhook]}": (targets.REQUESTS_TABLE, (webhook,)),
        "planbus without either trigger (RLS + FK)": (targets.REQUESTS_TABLE, (webhook, daily_limit)),
    }


def switch(conn: psycopg.Connection[Any], triggers: tuple[str, ...], enabled: bool) -> None:
    for trigger in triggers:
        verb = "ENABLE" if enabled else "DISABLE"
        conn.execute(f"ALTER TABLE {targets.REQUESTS_TABLE} {verb} TRIGGER {trigger}")


def run(ctx: Context) -> Result:
    per_variant = ctx.size.pick(2000, 300, 20)
    rounds = ctx.size.pick(20, 10, 1)
    warm = 3
    chosen = variants()
    work: dict[str, list[float]] = {label: [] for label in chosen}
    total: dict[str, list[float]] = {label: [] for label in chosen}
    with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
        serverside.install(conn)
        bare.create_table(conn)
        people = iter(
            data.requesters(conn, len(chosen) * (per_variant + warm * rounds) + 1, telegram_base=5_000_000)
        )
        conn.execute("VACUUM ANALYZE")
        for _ in range(rounds):
            for label, (into, off) in chosen.items():
                switch(conn, off, enabled=False)
                try:
                    batch = [next(people) for _ in range(per_variant // rounds + warm)]
                    transactions = [
                        [
                            *targets.as_mini_app(p.user_id, p.telegram_id),
                            targets.mini_app_insert(into, p.lead_id, p.telegram_id),
                        ]
                        for p in batch
                    ]
                    timed = serverside.time_transactions(conn, transactions)[warm:]
                    work[label] += timed.work
                    total[label] += timed.total
                finally:
                    switch(conn, off, enabled=True)
        person = next(people)
        plan = serverside.explain_nested(
            conn,
            [
                *targets.as_mini_app(person.user_id, person.telegram_id),
                targets.mini_app_insert(targets.REQUESTS_TABLE, person.lead_id, person.telegram_id),
            ],
        )
    ctx.artifact("mini_app_insert_plan.txt").write_text(plan + "\n")

    table = Table(
        "server time per insert: its statements (role, claims, insert and triggers), and with the commit",
        [
            Column("median", "median", "ms"),
            Column("p95", "p95", "ms"),
            Column("ratio", "median vs bare", "x"),
            Column("with_commit", "with commit, median", "ms"),
            Column("commit_ratio", "vs bare", "x"),
        ],
    )
    base = percentile(work[BASELINE], 50)
    base_total = percentile(total[BASELINE], 50)
    for label in chosen:
        median = percentile(work[label], 50)
        with_commit = percentile(total[label], 50)
        table.add(
            label,
            median=median,
            p95=percentile(work[label], 95),
            ratio=ratio(median, base),
            with_commit=with_commit,
            commit_ratio=ratio(with_commit, base_total),
        )
    return Result(
        title="the Mini App's insert against a bare insert (server time)",
        about=__doc__ or "",
        params={"inserts_per_variant": len(work[BASELINE]), "rounds": rounds},
        tables=[table],
        checks=[
            Check(
                "Mini App insert vs bare insert (median)",
                ratio(table.cell(PLANBUS, "median"), base),
                "<=",
                1.5,
            )
        ],
        artifacts=[f"{ctx.name}/mini_app_insert_plan.txt"],
    )
