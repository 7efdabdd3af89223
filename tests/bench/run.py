"""Run the benchmark suite: each benchmark prints its table and writes <json-dir>/<name>.json.

    make bench                       everything, full size (a few minutes)
    make bench ARGS=--quick          everything, small (under a minute on an idle machine)
    .venv/bin/python tests/bench/run.py --only scale --only pickup --json-dir /tmp/bench

On DATABASE_URL's server when it is set (each benchmark makes and drops its own databases there), else on
an embedded PostgreSQL started for the run. The fault drill always starts a server of its own, since it
stops and restarts it. `make bench-report` (tests/bench/report.py) turns the JSON into BENCHMARKS.md.
Exit status 1 when a benchmark crashed or an invariant (`must`) failed; a missed target is reported only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent)]

import psycopg  # noqa: E402
from harness import Context, Size, render, result_json, write_json  # noqa: E402
from scratch import server  # noqa: E402

# In the order they run and are reported; each is the module bench_<name>.py with run(ctx) -> Result.
BENCHMARKS = (
    "pickup",
    "throughput",
    "insert",
    "scale",
    "cold_start",
    "reminders",
    "llm_faults",
    "fault_drill",
)
DEFAULT_JSON_DIR = ROOT / ".planbus" / "bench"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine(server_url: str) -> dict[str, Any]:
    """What the figures were measured on."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    cpu = ""
    with contextlib.suppress(OSError):  # no /proc: the CPU goes unnamed
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        memory_kb = 0
    return {
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgresql": row[0] if row else None,
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL",
        "platform": platform.platform(),
    }


def selected(only: list[str]) -> list[str]:
    names = [name for value in only for name in value.split(",") if name]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if not names or name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="planbus benchmarks, each beside its baseline")
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole suite in about a minute")
    parser.add_argument("--size", choices=[s.value for s in Size], help="full, quick, or tiny (the test's)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these")
    parser.add_argument("--json-dir", type=Path, default=DEFAULT_JSON_DIR, help="where the JSON goes")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    size = Size(args.size) if args.size else Size.QUICK if args.quick else Size.FULL
    names = selected(args.only)
    json_dir: Path = args.json_dir.resolve()
    command = "python tests/bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    failed: list[str] = []
    began = time.monotonic()
    with server() as server_url:
        host = machine(server_url)
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        print(
            f"planbus benchmarks, {size.value} size, commit {commit[:12]}{' (modified)' if dirty else ''}, "
            f"{host['cores']} cores, Python {host['python']}, PostgreSQL {host['postgresql']} "
            f"({host['database']}), load {os.getloadavg()[0]:.1f}\n"
        )
        for name in names:
            module = importlib.import_module(f"bench_{name}")
            ctx = Context(name, size, server_url, host["database"], json_dir)
            load_before = os.getloadavg()[0]
            started = time.monotonic()
            meta: dict[str, Any] = {
                "command": command.strip(),
                "size": size.value,
                "commit": commit,
                "modified": dirty,
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": host,
            }
            try:
                result = module.run(ctx)
            except Exception:
                failed.append(name)
                error = traceback.format_exc()
                print(f"== {name}: CRASHED\n{error}", flush=True)
                write_json(json_dir / f"{name}.json", {"benchmark": name, **meta, "error": error})
                continue
            meta["seconds"] = round(time.monotonic() - started, 1)
            meta["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            print(render(name, result), f"\n({meta['seconds']} s)\n", flush=True)
            write_json(json_dir / f"{name}.json", result_json(name, result, meta))
            if any(check.kind == "must" and not check.met for check in result.checks):
                failed.append(name)
    print(f"{len(names)} benchmark(s) in {time.monotonic() - began:.0f} s; JSON in {json_dir}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
