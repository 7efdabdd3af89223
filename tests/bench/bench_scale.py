"""Scale: the hot statements with a small and a large history of finished rows in the tables.

The history (requests, their reminders and their error history, data.finished_history) is made in bulk
with generate_series, in two databases, one small and one large, at the same traffic a day: the small
history is HISTORY_DAYS of use, the large one the same use kept for longer (1 million rows: about 8 years),
so what grows is the history, not the day's work (the status report's last-24-hour figures count a day's
rows, as they must); a live queue of the same size is in both (data.active_rows: lost webhooks, expired
leases, due reminders, a Mini App user). The tables are then vacuumed and analysed, as autovacuum leaves
them. Each operation runs in rolled-back rounds on the
server (bench.time_rolled_back), so every round finds the same rows, the two databases taking turns round
by round; the median server time at the large size is compared with the small one. EXPLAIN (ANALYZE,
BUFFERS) of every statement each operation runs, nested ones inside the SQL functions included
(auto_explain), is saved beside the JSON as <operation>@<rows>.txt.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

import data
import psycopg
import serverside
import targets
from harness import Check, Column, Context, Result, Table, percentile, ratio


def compact_result(result: str) -> str:
    """The sample result with its first plan step only: history rows of a realistic shape, at a size
    that lets a million of them be written in about a minute."""
    document = json.loads(result)
    document["plan"]["steps"] = document["plan"]["steps"][:1]
    return json.dumps(document)


# The small history's span; the large one spans as many more days as it has more rows.
HISTORY_DAYS = 30


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(ctx: Context) -> Result:
    small, large = ctx.size.pick((10_000, 1_000_000), (10_000, 100_000), (100, 1_000))
    # Sub-millisecond statements on a shared machine: medians of many rounds, or the ratio is noise.
    rounds = ctx.size.pick(101, 31, 3)
    sample = targets.sample_result()
    history = compact_result(sample.result)
    timings: dict[int, dict[str, list[float]]] = {small: {}, large: {}}
    built: dict[int, float] = {}
    artifacts = []
    with contextlib.ExitStack() as stack:
        conns = {}
        operations = {}
        for size in (small, large):
            url = stack.enter_context(ctx.database())
            conn = stack.enter_context(psycopg.connect(url, autocommit=True))
            serverside.install(conn)
            fixture = data.active_rows(conn, sample.result)
            started = time.monotonic()
            # Bulk rows are consistent by construction: skip the per-row foreign-key checks while loading.
            conn.execute("SET session_replication_role = replica")
            data.finished_history(conn, 0, size, history, days=HISTORY_DAYS * size / small)
            conn.execute("RESET session_replication_role")
            conn.execute("VACUUM (ANALYZE) public.plan_requests, public.reminders, public.leads")
            conn.execute(f"VACUUM (ANALYZE) {targets.ERRORS_TABLE}")
            built[size] = time.monotonic() - started
            conns[size], operations[size] = conn, targets.scale_operations(fixture)
        for name in operations[small]:
            for size in (small, large):
                serverside.time_rolled_back(conns[size], operations[size][name], 2)  # caches and plans
                timings[size][name] = []
            # The sizes take turns, round by round, so a busy moment of the machine falls on both.
            for _ in range(rounds):
                for size in (small, large):
                    timings[size][name] += serverside.time_rolled_back(conns[size], operations[size][name], 1)
            for size in (small, large):
                path = ctx.artifact(f"{slug(name)}@{size}.txt")
                path.write_text(serverside.explain_nested(conns[size], operations[size][name]) + "\n")
                artifacts.append(f"{ctx.name}/{path.name}")
        counts: dict[str, int] = dict(
            conns[large]
            .execute(
                "SELECT 'requests', count(*) FROM public.plan_requests UNION ALL "
                "SELECT 'reminders', count(*) FROM public.reminders UNION ALL "
                f"SELECT 'errors', count(*) FROM {targets.ERRORS_TABLE}"
            )
            .fetchall()
        )

    label_small, label_large = f"{small:,}".replace(",", " "), f"{large:,}".replace(",", " ")
    table = Table(
        f"median server time per call with {label_small} and with {label_large} finished requests",
        [
            Column("small", f"{label_small} rows", "ms"),
            Column("large", f"{label_large} rows", "ms"),
            Column("ratio", "ratio", "x"),
        ],
    )
    checks = []
    show = []
    for name in timings[small]:
        at_small = percentile(timings[small][name], 50)
        at_large = percentile(timings[large][name], 50)
        table.add(name, small=at_small, large=at_large, ratio=ratio(at_large, at_small))
        check = Check(f"{name}: {label_large} vs {label_small} rows", ratio(at_large, at_small), "<=", 1.2)
        checks.append(check)
        if not check.met:
            show.append(f"{ctx.name}/{slug(name)}@{large}.txt")
    return Result(
        title="hot statements against the size of the history",
        about=__doc__ or "",
        params={
            "finished_requests": [small, large],
            "rows_at_large": counts,
            "rounds": rounds,
            "build_seconds": {str(k): round(v, 1) for k, v in built.items()},
        },
        tables=[table],
        checks=checks,
        artifacts=artifacts,
        show=show,
    )
