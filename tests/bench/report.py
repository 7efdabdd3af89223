"""Write BENCHMARKS.md from the JSON the benchmarks wrote, so the figures there never drift from a run.

    .venv/bin/python tests/bench/report.py [--json-dir .planbus/bench] [--output BENCHMARKS.md]

Every section is generated: the command, the commit and the machine of each run, each benchmark's
description (its module docstring), its tables, its checks against the targets, and the files it saved
(EXPLAIN plans, server logs) beside its JSON. Plans a benchmark marks as worth reading are embedded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import format_cell  # noqa: E402
from run import BENCHMARKS, DEFAULT_JSON_DIR, ROOT  # noqa: E402


def load(json_dir: Path) -> list[dict[str, Any]]:
    documents = {path.stem: json.loads(path.read_text()) for path in sorted(json_dir.glob("*.json"))}
    ordered = [documents.pop(name) for name in BENCHMARKS if name in documents]
    return ordered + list(documents.values())


def provenance(doc: dict[str, Any]) -> str:
    """The commit, command and machine of a run (not its time: the benchmarks of one run share the rest)."""
    m = doc["machine"]
    commit = doc["commit"][:12] + (" with uncommitted changes" if doc.get("modified") else "")
    return (
        f"commit `{commit}`, `{doc['command']}` ({doc['size']} size); "
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']} ({m['database']})"
    )


def markdown_table(table: dict[str, Any]) -> list[str]:
    columns = table["columns"]
    lines = [f"**{table['title']}**", ""]
    lines.append("| | " + " | ".join(c["title"] or " " for c in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for row in table["rows"]:
        cells = []
        for column in columns:
            unit = column["unit"] if row.get("unit") is None or column["unit"] == "x" else row["unit"]
            cells.append(format_cell(row["cells"].get(column["key"]), unit).replace("|", "\\|"))
        lines.append(f"| {row['label'].replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def verdict(check: dict[str, Any]) -> str:
    """met, or how far from the limit the figure is."""
    if check["met"]:
        return "met"
    if check["kind"] == "must":
        return "**FAILED**"
    value, limit = check["value"], check["limit"]
    if value is None:
        return "**missed** (not measured)"
    if check["op"] == "<=" and limit:
        return f"**missed**: {value / limit:.1f}x the limit"
    if check["op"] == ">=" and limit:
        return f"**missed**: {100 * (1 - value / limit):.1f}% short"
    return f"**missed** by {format_cell(abs(value - limit), check['unit'])}"


def section(doc: dict[str, Any], header: str) -> list[str]:
    name = doc["benchmark"]
    if "error" in doc:
        tail = "\n".join(doc["error"].strip().splitlines()[-12:])
        return [f"## {name}: crashed", "", f"Measured on {provenance(doc)}.", "", "```", tail, "```", ""]
    lines = [f"## {name}: {doc['title']}", ""]
    if provenance(doc) != header:
        lines += [f"Measured on {provenance(doc)}.", ""]
    lines += [doc["about"].strip(), ""]
    load: list[float] = doc.get("load") or [0.0, 0.0]
    lines += [
        f"Started {doc['measured_at']}, took {doc['seconds']} s; load average {load[0]} at the start, "
        f"{load[1]} at the end.",
        "",
    ]
    for table in doc["tables"]:
        lines += markdown_table(table)
    if doc["checks"]:
        lines += ["| check | measured | needs | |", "|---|---:|---:|---|"]
        for check in doc["checks"]:
            value = format_cell(check["value"], check["unit"])
            needs = f"{check['op']} {format_cell(check['limit'], check['unit'])}"
            lines.append(f"| {check['name']} | {value} | {needs} | {verdict(check)} |")
        lines.append("")
    lines += [f"- {note}" for note in doc["notes"]]
    if doc["notes"]:
        lines.append("")
    if doc["artifacts"]:
        lines += [f"Saved beside the JSON: {', '.join(f'`{a}`' for a in doc['artifacts'])}.", ""]
    for shown in doc.get("show", []):
        path = Path(doc["json_dir"]) / shown
        if path.exists():
            lines += [
                f"<details><summary><code>{shown}</code></summary>",
                "",
                "```",
                path.read_text().rstrip(),
                "```",
                "",
                "</details>",
                "",
            ]
    return lines


def render(documents: list[dict[str, Any]]) -> str:
    finished = [doc for doc in documents if "error" not in doc]
    first = finished[0] if finished else documents[0]
    header = provenance(first)
    loads = [value for doc in finished for value in doc.get("load", [])]
    cores = first["machine"]["cores"] or 1
    lines = [
        "# planbus benchmarks",
        "",
        "Generated by `tests/bench/report.py` from the JSON that `tests/bench/run.py` writes: run",
        "`make bench` (`ARGS=--quick` for small sizes, `ARGS='--only NAME'` for one benchmark), then",
        "`make bench-report`. Do not edit by hand. Every figure is compared with its baseline measured in",
        "the same run; on a shared machine the absolute times are noise, the ratios are the result.",
        "",
        f"Measured on {header}, from {first['measured_at']}.",
        "",
    ]
    if loads and max(loads) > cores / 2:
        lines += [
            f"**Provisional figures:** the machine was shared and busy during the run (load average up to "
            f"{max(loads):.1f} on {cores} cores). Absolute times are inflated and noisy; compare the ratios.",
            "",
        ]
    for kind, heading in (("target", "Targets"), ("must", "Invariants (a failure fails the run)")):
        lines += [
            f"## {heading}",
            "",
            "| benchmark | check | measured | needs | |",
            "|---|---|---:|---:|---|",
        ]
        for doc in documents:
            if "error" in doc:
                lines.append(f"| {doc['benchmark']} | crashed | | | **FAILED** |")
                continue
            for check in doc["checks"]:
                if check["kind"] != kind:
                    continue
                value = format_cell(check["value"], check["unit"])
                needs = f"{check['op']} {format_cell(check['limit'], check['unit'])}"
                lines.append(
                    f"| {doc['benchmark']} | {check['name']} | {value} | {needs} | {verdict(check)} |"
                )
        lines.append("")
    for doc in documents:
        lines += section(doc, header)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write BENCHMARKS.md from the benchmarks' JSON")
    parser.add_argument("--json-dir", type=Path, default=DEFAULT_JSON_DIR)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    documents = load(args.json_dir)
    if not documents:
        raise SystemExit(f"no benchmark JSON in {args.json_dir}: run `make bench` first")
    for doc in documents:
        doc["json_dir"] = str(args.json_dir)
    args.output.write_text(render(documents))
    print(f"wrote {args.output} from {len(documents)} benchmark(s) in {args.json_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
