"""How long a cold start spends importing functions/main.py, next to a bare interpreter and the libraries
main.py must not import eagerly (openai, supabase). Best of N fresh interpreters each.

    .venv/bin/python tests/bench/import_time.py [--runs 7]

`python -X importtime -c "import main"` (from functions/) breaks the figure down per module.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TIMED = """
import sys, time
sys.path.insert(0, "functions")
started = time.perf_counter()
{statement}
print(time.perf_counter() - started)
"""

CASES = {
    "interpreter start (python -c pass)": None,
    "import main (all entry points)": "import main",
    "import openai (kept out of main)": "import openai",
    "import supabase (kept out of main)": "import supabase",
}


def best_of(runs: int, statement: str | None) -> tuple[float, float]:
    """(best wall time of a whole interpreter run, best time of the statement alone), in seconds."""
    import time

    walls, inner = [], []
    for _ in range(runs):
        code = "pass" if statement is None else TIMED.format(statement=statement)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        walls.append(time.perf_counter() - started)
        inner.append(float(done.stdout.strip() or 0.0))
    return min(walls), min(inner)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"best of {args.runs} fresh interpreters ({sys.executable})")
    print(f"{'case':40} {'import':>10} {'process':>10}")
    for label, statement in CASES.items():
        wall, inner = best_of(args.runs, statement)
        imported = f"{inner * 1000:8.0f}ms" if statement else f"{'-':>10}"
        print(f"{label:40} {imported} {wall * 1000:8.0f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
