"""Cold start per target: import and first request in a fresh interpreter, against functions_framework alone.

Every target of functions/main.py (found by reading it: the functions decorated with
functions_framework.http) is started in a new interpreter that imports functions_framework, loads the
target with create_app (which imports main.py) and answers one real first request through the test
client (targets.first_request, the rows tests/support/first_requests.py arranges: each worker and
webhook processes a pending row, the sweeper a lost one, the reminder sender a due reminder, telegram_auth
signs a user in), connecting to the database included. The baseline does the same
with bare_main.bare_hello, a function that answers {"ok": true}: functions_framework alone. The cases
take turns round after round; the median of each is reported, in-process (what the target costs) and as
the whole process's wall time (interpreter start and exit included, the same for all). The CPU time of
import + first request is reported beside them: on a busy machine it moves far less than wall time, so
the CPU ratio is the steadier comparison (the target is checked on wall time; the database's own work is
in wall time only). A second table breaks `import main` down by what main.py imports directly (python -X
importtime).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import targets
from harness import Check, Column, Context, Result, Table, percentile, ratio

HERE = Path(__file__).resolve().parent
BASELINE = "functions_framework alone"
MARKER = "BENCH_COLD_START "
CHILD = f"""
import json, os, time
started = time.perf_counter()
cpu_started = time.process_time()
import functions_framework
app = functions_framework.create_app(os.environ["BENCH_TARGET"], os.environ["BENCH_SOURCE"])
imported = time.perf_counter()
headers = json.loads(os.environ["BENCH_HEADERS"])
response = app.test_client().post("/", data=os.environ["BENCH_BODY"], headers=headers)
answered = time.perf_counter()
figures = {{"import": imported - started, "first": answered - imported, "status": response.status_code}}
figures["cpu"] = time.process_time() - cpu_started
print({MARKER!r} + json.dumps(figures))
"""


def discover(source: Path) -> list[str]:
    """The functions of `source` decorated with @functions_framework.http or .cloud_event, in order."""
    names = []
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if (
                    isinstance(decorator, ast.Attribute)
                    and isinstance(decorator.value, ast.Name)
                    and decorator.value.id == "functions_framework"
                    and decorator.attr in ("http", "cloud_event")
                ):
                    names.append(node.name)
    return names


def fresh(target: str, source: Path, body: dict[str, object], env: dict[str, str | None]) -> dict[str, float]:
    """One cold start in a new interpreter: import, first request (seconds), its status, and wall time."""
    merged = {**os.environ, **env}
    merged.update(
        BENCH_TARGET=target,
        BENCH_SOURCE=str(source),
        BENCH_BODY=json.dumps(body),
        BENCH_HEADERS=json.dumps(targets.headers()),
    )
    child_env = {k: v for k, v in merged.items() if v is not None}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=child_env,
        capture_output=True,
        text=True,
        check=False,
        cwd=source.parent,
    )
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"cold start of {target} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(lines[-1][len(MARKER) :])
    return {**figures, "wall": wall}


def import_breakdown(main: Path) -> list[tuple[str, float, float]]:
    """(module, own ms, cumulative ms) of what importing main.py adds to functions_framework, by what
    main.py imports directly, heaviest first."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import functions_framework; import main"],
        cwd=main.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    # Post-order: a module's imports are printed, one level deeper, just before the module itself.
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
    children: list[tuple[str, float, float]] = []
    for line in done.stderr.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        depth = (len(match.group(3)) - 1) // 2
        entry = (match.group(4), int(match.group(1)) / 1000, int(match.group(2)) / 1000)
        if depth == 1:
            children.append(entry)
        elif depth == 0:
            if entry[0] == "main":
                return sorted(
                    [*children, ("main (its own code)", entry[1], entry[1])], key=lambda e: e[2], reverse=True
                )
            children = []
    return []


def run(ctx: Context) -> Result:
    runs = ctx.size.pick(5, 1, 1)
    names = discover(targets.MAIN)
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in [BASELINE, *names]}
    unknown = []
    expects: dict[str, int] = {}
    with ctx.database() as url:
        for _ in range(runs):
            figures[BASELINE].append(fresh("bare_hello", HERE / "bare_main.py", {}, {}))
            for name in names:
                first = targets.first_request(name, url)
                if first is None:
                    unknown.append(name)
                    first = targets.FirstRequest({}, {}, expect=0)
                expects[name] = first.expect
                env = {**targets.function_env(url), **first.env}
                figures[name].append(fresh(name, targets.MAIN, first.body, env))
    breakdown = import_breakdown(targets.MAIN)

    table = Table(
        f"cold start, median of {runs} fresh interpreter(s) each",
        [
            Column("import", "import", "ms"),
            Column("first", "first request", "ms"),
            Column("total", "import + first", "ms"),
            Column("ratio", "vs functions_framework alone", "x"),
            Column("cpu", "CPU time", "ms"),
            Column("cpu_ratio", "CPU vs functions_framework alone", "x"),
            Column("wall", "process wall", "ms"),
            Column("status", "status"),
        ],
    )
    medians = {}
    cpu_medians = {}
    for name, values in figures.items():
        total = percentile([(v["import"] + v["first"]) * 1000 for v in values], 50)
        medians[name] = total
        cpu_medians[name] = percentile([v["cpu"] * 1000 for v in values], 50)
        table.add(
            name,
            **{
                "import": percentile([v["import"] * 1000 for v in values], 50),
                "first": percentile([v["first"] * 1000 for v in values], 50),
                "total": total,
                "ratio": ratio(total, medians[BASELINE]),
                "cpu": cpu_medians[name],
                "cpu_ratio": ratio(cpu_medians[name], cpu_medians[BASELINE]),
                "wall": percentile([v["wall"] * 1000 for v in values], 50),
                "status": ", ".join(sorted({str(int(v["status"])) for v in values})),
            },
        )
    imports = Table(
        "what `import main` adds to functions_framework, by what main.py imports directly (-X importtime)",
        [Column("cumulative", "cumulative", "ms"), Column("own", "own", "ms")],
    )
    for module, own, cumulative in breakdown[:12]:
        imports.add(module, cumulative=cumulative, own=own)
    checks = [
        Check(
            f"{name}: cold start vs functions_framework alone",
            ratio(medians[name], medians[BASELINE]),
            "<=",
            1.3,
        )
        for name in names
    ]
    for name in names:
        if name not in unknown:
            statuses = {int(v["status"]) for v in figures[name]}
            checks.append(
                Check(
                    f"{name}: first request answered {expects[name]}",
                    float(max(statuses)),
                    "==",
                    float(expects[name]),
                    "must",
                    "",
                )
            )
    notes = (
        [
            f"no first request defined in targets.first_request for {', '.join(sorted(set(unknown)))}: "
            "posted {}"
        ]
        if unknown
        else []
    )
    return Result(
        title="cold start per target against functions_framework alone",
        about=__doc__ or "",
        params={"runs": runs, "targets": names},
        tables=[table, imports],
        checks=checks,
        notes=notes,
    )
