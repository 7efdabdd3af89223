"""The benchmark suite runs end to end at its tiny size, so that no benchmark can rot unnoticed: each one
writes its JSON with tables and holds its invariants, and BENCHMARKS.md can be made from the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "bench" / "run.py"
REPORT = ROOT / "tests" / "bench" / "report.py"
sys.path.insert(0, str(RUN.parent))

from run import BENCHMARKS  # noqa: E402

pytestmark = pytest.mark.e2e


def test_every_benchmark_runs_at_tiny_size_and_the_report_is_made_from_it(
    tmp_path: Path, server_url: str
) -> None:
    json_dir = tmp_path / "bench"
    env = {**os.environ, "DATABASE_URL": server_url}
    done = subprocess.run(
        [sys.executable, str(RUN), "--size", "tiny", "--json-dir", str(json_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    for name in BENCHMARKS:
        document = json.loads((json_dir / f"{name}.json").read_text())
        assert "error" not in document, document.get("error")
        assert document["size"] == "tiny" and document["machine"]["cores"]
        assert document["tables"] and all(table["rows"] for table in document["tables"]), name
        assert all(check["met"] for check in document["checks"] if check["kind"] == "must"), name
        assert f"== {name}:" in done.stdout

    output = tmp_path / "BENCHMARKS.md"
    subprocess.run(
        [sys.executable, str(REPORT), "--json-dir", str(json_dir), "--output", str(output)],
        check=True,
        env=env,
    )
    text = output.read_text()
    assert all(f"## {name}: " in text for name in BENCHMARKS)
    assert "| check | measured | needs | |" in text
