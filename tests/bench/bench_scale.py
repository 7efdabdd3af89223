"""Scale: the hot statements with a small and a large history of finished rows in the tables.

The history (requests, their reminders and their error history, data.finished_history) is made in bulk
with generate_series, first the small size, then topped up to the large one; a live queue of the same
size is there at both (data.active_rows: lost webhooks, expired leases, due reminders, a Mini App user).
After each size the tables are vacuumed and analysed, as autovacuum leaves them. Each operation then runs
in rolled-back rounds on the server (bench.time_rolled_back), so every round finds the same rows, and the
median server time at the large size is compared with the small one. EXPLAIN (ANALYZE, BUFFERS) of every
statement each operation runs, nested ones inside the SQL functions included (auto_explain), is saved
beside the JSON as <operation>@<rows>.txt.
"""

from __future__ import annotations

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


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(ctx: Context) -> Result:
    small, large = ctx.size.pick((10_000, 1_000_000), (10_000, 100_000), (100, 1_000))
    rounds = ctx.size.pick(21, 11, 3)
    sample = targets.sample_result()
    history = compact_result(sample.result)
    timings: dict[int, dict[str, list[float]]] = {}
    built: dict[int, float] = {}
    artifacts = []
    with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
        serverside.install(conn)
        fixture = data.active_rows(conn, sample.result)
        done = 0
        for size in (small, large):
            started = time.monotonic()
            # Bulk rows are consistent by construction: skip the per-row foreign-key checks while loading.
            conn.execute("SET session_replication_role = replica")
            data.finished_history(conn, done, size, history)
            conn.execute("RESET session_replication_role")
            conn.execute("VACUUM (ANALYZE) public.plan_requests, public.reminders, public.leads")
            conn.execute("VACUUM (ANALYZE) planbus_private.plan_request_errors")
            built[size] = time.monotonic() - started
            done = size
            timings[size] = {}
            for name, statements in targets.scale_operations(fixture).items():
                serverside.time_rolled_back(conn, statements, 2)  # warm the caches and the plans
                timings[size][name] = serverside.time_rolled_back(conn, statements, rounds)
                path = ctx.artifact(f"{slug(name)}@{size}.txt")
                path.write_text(serverside.explain_nested(conn, statements) + "\n")
                artifacts.append(f"{ctx.name}/{path.name}")
        counts: dict[str, int] = dict(
            conn.execute(
                "SELECT 'requests', count(*) FROM public.plan_requests UNION ALL "
                "SELECT 'reminders', count(*) FROM public.reminders UNION ALL "
                "SELECT 'errors', count(*) FROM planbus_private.plan_request_errors"
            ).fetchall()
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
