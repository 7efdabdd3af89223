"""Worker throughput: requests per second through planbus's worker target against the bare function.

Both are functions-framework servers run the same way, on the same database, posted to by 1 and by 8
keep-alive HTTP clients; each request takes one pending row to completed (planbus with the offline
generator: claim, plan, reminders, complete; the bare function: one UPDATE to claim, one to complete
with a plan-sized result). The two alternate in rounds, so a busy spell of the machine falls on both.

Then, per request at 1 client, where the time goes:
- both servers again under profiled_main.py, which times the target inside the server and the part of it
  spent waiting in psycopg (so: framework time = round trip - target, Python time = target - SQL waits);
- planbus once more under cProfile, its own time grouped by kind and its heaviest functions;
- the SQL server time of the claim and the completion against the bare pair, each in its own transaction
  on the server (bench.time_transactions), and the SQL functions' own time (track_functions = all).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import bare
import data
import httpx
import psycopg
import serverside
import targets
from harness import Check, Column, Context, Result, Table, mean, percentile, ratio
from load import Load, drive
from servers import FunctionServer, running

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 8)
WARM = 10


def bare_server(url: str, result_file: Path, log: Path, target: str = "bare_worker") -> FunctionServer:
    env = {"DATABASE_URL": url, "BARE_RESULT_FILE": str(result_file)}
    return FunctionServer(target, HERE / "bare_main.py", env, log)


def profiled(server: FunctionServer, *, profile: bool) -> FunctionServer:
    """The same server, with its target served through profiled_main.py."""
    env = {
        **server.env,
        "BENCH_SOURCE": str(server.source),
        "BENCH_TARGET": server.target,
        "BENCH_PROFILE": "1" if profile else "0",
    }
    suffix = "-cprofile" if profile else "-timed"
    return FunctionServer(
        "profiled", HERE / "profiled_main.py", env, server.log.with_stem(server.log.stem + suffix)
    )


def outcome(response: httpx.Response) -> str:
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    return targets.outcome_of(response.json())


def dump(server: FunctionServer) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/?dump=1", timeout=60).json()
    return answer


def run(ctx: Context) -> Result:
    n = ctx.size.pick(2000, 100, 10)
    rounds = ctx.size.pick(4, 1, 1)
    n_profile = ctx.size.pick(300, 50, 5)
    n_sql = ctx.size.pick(300, 50, 5)
    sample = targets.sample_result()
    loads: dict[tuple[str, int], Load] = {}
    with ctx.database() as url, psycopg.connect(url, autocommit=True) as conn:
        serverside.install(conn)
        bare.create_table(conn)
        result_file = ctx.artifact("bare_result.json")
        result_file.write_text(sample.result)
        per_path = 4 * WARM + len(CONCURRENCY) * n + 2 * n_profile + 2 * n_sql
        planbus_ids = iter(data.pending_requests(conn, per_path))
        bare_ids = iter(data.bare_pending(conn, per_path))
        conn.execute("VACUUM ANALYZE")
        paths = {
            "planbus": (targets.server(targets.WORKER_TARGET, url, ctx.artifact("planbus.log")), planbus_ids),
            "bare": (bare_server(url, result_file, ctx.artifact("bare.log")), bare_ids),
        }

        def bodies(path: str, count: int) -> list[dict[str, Any]]:
            ids = paths[path][1]
            chosen = [next(ids) for _ in range(count)]
            return [targets.worker_body(i) if path == "planbus" else {"request_id": i} for i in chosen]

        def post(path: str, server: FunctionServer, count: int, concurrency: int) -> Load:
            return drive(
                server.url,
                bodies(path, count),
                concurrency=concurrency,
                headers=targets.headers(),
                outcome=outcome,
            )

        timed = {path: profiled(server, profile=False) for path, (server, _) in paths.items()}
        cprofiled = profiled(paths["planbus"][0], profile=True)
        client_ms: dict[str, list[float]] = {}
        with running(*(server for server, _ in paths.values()), *timed.values(), cprofiled):
            for path, (server, _) in paths.items():
                post(path, server, WARM, 1)
            for concurrency in CONCURRENCY:
                for round_ in range(rounds):
                    order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
                    for path in order:
                        load = post(path, paths[path][0], n // rounds, concurrency)
                        loads.setdefault((path, concurrency), Load())
                        loads[(path, concurrency)] += load
            for path, server in [*timed.items(), ("planbus", cprofiled)]:
                post(path, server, WARM, 1)
                httpx.get(f"{server.url}/?reset=1", timeout=60).raise_for_status()
            # The two timed servers take turns in chunks, as the throughput rounds do.
            chunks = ctx.size.pick(6, 2, 1)
            for _ in range(chunks):
                for path, server in timed.items():
                    load = post(path, server, n_profile // chunks, 1)
                    client_ms[path] = client_ms.get(path, []) + load.latencies
            post("planbus", cprofiled, n_profile, 1)
            inside = {path: dump(server)["samples"] for path, server in timed.items()}
            profile = dump(cprofiled)["profile"]

        sql_ms, functions = sql_server_time(url, sample, planbus_ids, bare_ids, n_sql)

    ours_all = [load for (path, _), load in loads.items() if path == "planbus"]
    completed = sum(load.outcomes["completed"] for load in ours_all)
    processed = sum(len(load.latencies) for load in ours_all)
    throughput = Table(
        "requests processed per second (HTTP clients → function server, offline plans)",
        [
            Column("planbus", "planbus", "/s"),
            Column("bare", "bare", "/s"),
            Column("ratio", "planbus vs bare", "x"),
            Column("planbus_p50", "planbus p50", "ms"),
            Column("bare_p50", "bare p50", "ms"),
        ],
    )
    for concurrency in CONCURRENCY:
        ours, theirs = loads[("planbus", concurrency)], loads[("bare", concurrency)]
        throughput.add(
            f"{concurrency} client{'s' if concurrency > 1 else ''}",
            planbus=ours.per_second,
            bare=theirs.per_second,
            ratio=ratio(ours.per_second, theirs.per_second),
            planbus_p50=percentile(ours.latencies, 50),
            bare_p50=percentile(theirs.latencies, 50),
        )
    tables = [
        throughput,
        breakdown(client_ms, inside, sql_ms),
        *profile_tables(profile, n_profile),
        sql_functions_table(functions, n_sql),
    ]
    checks = [
        Check(f"throughput at {row.label} vs bare", row.cells["ratio"], ">=", 0.8)  # type: ignore[arg-type]
        for row in throughput.rows
    ]
    checks.append(
        Check("every planbus request completed", float(completed), "==", float(processed), "must", "")
    )
    return Result(
        title="worker throughput against the bare function, and where the time goes",
        about=__doc__ or "",
        params={"requests_per_row": n, "rounds": rounds, "profiled_requests": n_profile, "sql_timed": n_sql},
        tables=tables,
        checks=checks,
    )


def sql_server_time(
    url: str, sample: targets.SampleResult, planbus_ids: Any, bare_ids: Any, count: int
) -> tuple[dict[str, dict[str, float | None]], list[tuple[str, int, float, float]]]:
    """Median server time (ms) of claim and complete, planbus's and the bare pair, each its own
    transaction; and planbus's SQL functions' (name, calls, own ms, total ms) over as many more calls."""
    # The first calls of a session plan their statements: WARM of each go first and are not counted.
    ours = [next(planbus_ids) for _ in range(WARM + count)]
    tracked = [next(planbus_ids) for _ in range(count)]
    theirs = [next(bare_ids) for _ in range(WARM + count)]

    def pairs(ids: list[str]) -> list[list[str]]:
        return [[sql] for i in ids for sql in (targets.claim_sql(i), targets.complete_sql(i, sample))]

    # planbus's pair and the bare pair take turns, request by request, in one call on the server.
    turns = [
        [sql]
        for ours_id, theirs_id in zip(ours, theirs, strict=True)
        for sql in (
            targets.claim_sql(ours_id),
            targets.complete_sql(ours_id, sample),
            bare.claim_literal(theirs_id),
            bare.complete_literal(theirs_id, sample.result),
        )
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        timed = serverside.time_transactions(conn, turns)[4 * WARM :]
    # Apart from the timed calls: tracking every nested function call has a cost of its own.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_reset()")
        conn.execute("SET track_functions = 'all'")
        serverside.time_transactions(conn, pairs(tracked))
    figures: dict[str, dict[str, float | None]] = {}
    for path, offset in (("planbus", 0), ("bare", 2)):
        timings = serverside.Timings(
            [t for i, t in enumerate(timed.work) if i % 4 in (offset, offset + 1)],
            [t for i, t in enumerate(timed.total) if i % 4 in (offset, offset + 1)],
        )
        claims, completes = timings.work[0::2], timings.work[1::2]
        figures[path] = {
            "claim": percentile(claims, 50),
            "complete": percentile(completes, 50),
            "pair": percentile([a + b for a, b in zip(claims, completes, strict=True)], 50),
            "commits": percentile([t - w for t, w in zip(timings.total, timings.work, strict=True)], 50),
        }
    time.sleep(1.0)  # the timing connection's function statistics reach the shared counters as it exits
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || funcname, calls, self_time, total_time FROM pg_stat_user_functions "
            "WHERE schemaname <> 'bench' ORDER BY self_time DESC"
        ).fetchall()
    return figures, [(name, calls, own, total) for name, calls, own, total in rows]


def breakdown(
    client_ms: dict[str, list[float]],
    inside: dict[str, list[list[float]]],
    sql_ms: dict[str, dict[str, float | None]],
) -> Table:
    table = Table(
        "one request at 1 client, where the time goes (mean ms per request; SQL server time: median)",
        [
            Column("planbus", "planbus", "ms"),
            Column("bare", "bare", "ms"),
            Column("ratio", "planbus vs bare", "x"),
        ],
    )

    def add(label: str, values: dict[str, float | None], unit_ratio: bool = True) -> None:
        table.add(label, **values, ratio=ratio(values["planbus"], values["bare"]) if unit_ratio else None)

    figures: dict[str, dict[str, float | None]] = {}
    for path in ("planbus", "bare"):
        samples = inside[path]
        target = mean([s[0] * 1000 for s in samples])
        sql = mean([s[1] * 1000 for s in samples])
        round_trip = mean(client_ms[path])
        figures[path] = {
            "round trip": round_trip,
            "target": target,
            "sql": sql,
            "python": None if target is None or sql is None else target - sql,
            "framework": None if round_trip is None or target is None else round_trip - target,
            "statements": mean([float(s[2]) for s in samples]),
        }

    def pick(key: str) -> dict[str, float | None]:
        return {"planbus": figures["planbus"][key], "bare": figures["bare"][key]}

    add("HTTP round trip (client)", pick("round trip"))
    add("  framework + HTTP (round trip - target)", pick("framework"))
    add("  in the target", pick("target"))
    add("    waiting on SQL (psycopg execute)", pick("sql"))
    add("    Python (target - SQL waits)", pick("python"))
    for key, label in (
        ("claim", "SQL server time: claim"),
        ("complete", "SQL server time: complete"),
        ("pair", "SQL server time: claim + complete"),
        ("commits", "SQL server time: the two commits"),
    ):
        add(label, {"planbus": sql_ms["planbus"][key], "bare": sql_ms["bare"][key]})
    table.add_in(
        "",
        "SQL statements sent per request",
        planbus=figures["planbus"]["statements"],
        bare=figures["bare"]["statements"],
        ratio=ratio(figures["planbus"]["statements"], figures["bare"]["statements"]),
    )
    return table


def profile_tables(profile: dict[str, Any], requests: int) -> list[Table]:
    categories = profile["categories"]
    total = sum(categories.values()) or 1.0
    kinds = Table(
        "planbus worker under cProfile: own time by kind (ms per request, profiler overhead included)",
        [Column("ms", "ms/request", "ms"), Column("share", "share", "%")],
    )
    for name, seconds in sorted(categories.items(), key=lambda item: item[1], reverse=True):
        kinds.add(name, ms=seconds * 1000 / requests, share=100 * seconds / total)
    heaviest = Table(
        "planbus worker under cProfile: heaviest functions by cumulative time",
        [
            Column("calls", "calls/request"),
            Column("cumulative", "cumulative", "ms"),
            Column("own", "own", "ms"),
        ],
    )
    skip = ("profiled_main.py", "_lsprof.Profiler")
    shown = [f for f in profile["functions"] if not any(s in f["function"] for s in skip)][:15]
    for function in shown:
        heaviest.add(
            re.sub(r"^\S*/lib/python3\.\d+/", "", function["function"].replace(f"{targets.ROOT}/", ""))[-90:],
            calls=round(function["calls"] / requests, 1),
            cumulative=function["cumulative"] * 1000 / requests,
            own=function["own"] * 1000 / requests,
        )
    return [kinds, heaviest]


def sql_functions_table(functions: list[tuple[str, int, float, float]], requests: int) -> Table:
    table = Table(
        "planbus's SQL functions during claim + complete (track_functions = all, which adds its own cost): "
        "own and total server time per request",
        [Column("calls", "calls/request"), Column("own", "own", "ms"), Column("total", "total", "ms")],
    )
    for name, calls, own, total in functions[:12]:
        table.add(name, calls=round(calls / requests, 1), own=own / requests, total=total / requests)
    return table
