"""What a cold start costs each target of functions/main.py, next to functions-framework serving a function
that imports nothing: a fresh interpreter imports the source through functions-framework and serves one
request doing the target's real work (tests/support/first_requests.py). Best of N per part, the runs of
all targets interleaved so that a busy machine slows each alike.

    .venv/bin/python tests/bench/import_time.py [--runs 7] [--target NAME ...] [--source main.py ...]

Targets are read from each main.py, so a new one is measured as soon as it exists (with an empty POST
until first_requests.py knows a request for it). `--source` compares another tree's main.py (planbus is
imported from beside it), e.g. a `git archive` of an earlier commit, run for run with this one. Runs on
DATABASE_URL's server when set (in scratch databases it drops afterwards), else on an embedded
PostgreSQL. `python -X importtime -c "import main"` (from functions/) breaks an import down per module.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from scratch import scratch_database, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the support package

from support.first_requests import FIRST_REQUESTS, MAIN, ColdStart, cold_start, targets

BARE = """
import functions_framework


@functions_framework.http
def bare(request):
    return "ok"
"""

Case = tuple[Path, str]  # (main.py, target)


def measure(
    runs: int, cases: list[Case], server_url: str
) -> tuple[list[ColdStart], dict[Case, list[ColdStart]]]:
    """`runs` cold starts of the bare function and of each case, each case on a database of its own."""
    bare_starts: list[ColdStart] = []
    seen: dict[Case, list[ColdStart]] = {case: [] for case in cases}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="planbus-bench-")))
        bare = folder / "bare.py"
        bare.write_text(BARE)
        databases = {case: stack.enter_context(scratch_database(server_url)) for case in cases}
        for _ in range(runs):
            bare_starts.append(cold_start("bare", server_url, None, source=bare))
            for case in cases:
                source, target = case
                arrange = FIRST_REQUESTS.get(target)
                with psycopg.connect(databases[case], autocommit=True, row_factory=dict_row) as sql:
                    request = arrange(sql) if arrange else None
                seen[case].append(cold_start(target, databases[case], request, source=source))
    return bare_starts, seen


def best(starts: list[ColdStart]) -> tuple[float, float]:
    """The least time importing main.py and the least time serving the first request."""
    return min(s.main for s in starts), min(s.request for s in starts)


def report(bare_starts: list[ColdStart], seen: dict[Case, list[ColdStart]], runs: int) -> None:
    """Importing functions_framework is the same work in every interpreter: its best over all of them is
    the floor each target starts from."""
    framework = min(s.framework for starts in [bare_starts, *seen.values()] for s in starts)
    bare_main, bare_request = best(bare_starts)
    floor = framework + bare_main + bare_request
    print(f"best of {runs} fresh interpreters ({sys.executable}); times in ms")
    print(
        f"functions-framework alone: import {framework * 1000:.0f}, "
        f"with a bare function and its first request {floor * 1000:.0f}"
    )
    for source in dict.fromkeys(source for source, _ in seen):
        print(f"\n{source}")
        print(
            f"  {'target':24} {'import':>7} {'request':>8} {'total':>7} {'import x':>9} {'total x':>8}  "
            "status  heavy modules after import | after the request"
        )
        for (of, target), starts in seen.items():
            if of != source:
                continue
            main, request = best(starts)
            imported = framework + main
            total = imported + request
            statuses = ",".join(str(code) for code in sorted({s.status for s in starts}))
            after_import = set().union(*(s.after_import for s in starts))
            after_request = set().union(*(s.after_request for s in starts))
            print(
                f"  {target:24} {imported * 1000:7.0f} {request * 1000:8.0f} {total * 1000:7.0f}"
                f" {imported / framework:9.2f} {total / floor:8.2f}  {statuses:6}  "
                f"{', '.join(sorted(after_import)) or '-'} | {', '.join(sorted(after_request)) or '-'}"
            )
    print("\nimport x: importing main.py through functions-framework, against importing functions_framework;")
    print("total x: that import and the first request, against functions-framework with the bare function.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", action="append", help="measure only this target (repeatable)")
    parser.add_argument(
        "--source", action="append", type=Path, help="a main.py to measure (repeatable; default this tree's)"
    )
    args = parser.parse_args()
    cases: list[Case] = []
    for source in [path.resolve() for path in args.source or [MAIN]]:
        declared = targets(source)
        unknown = sorted(set(args.target or []) - set(declared))
        if unknown:
            parser.error(f"{source} has no target {', '.join(unknown)} (it has {', '.join(declared)})")
        cases += [(source, target) for target in args.target or declared]
    with server() as server_url:
        report(*measure(args.runs, cases, server_url), args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
