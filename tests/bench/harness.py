"""What every benchmark shares: its size, its context, the result it returns, and how results are shown.

A benchmark is a module with `run(ctx) -> Result`. It reads how large to be from `ctx.size` (full, quick,
or tiny for the test that keeps the suite from rotting), takes databases from `ctx.database()`, and returns
tables of figures whose ratio columns compare each measured row with its baseline row from the same run.
`Check`s state the targets planbus is held to (`target`: reported, a miss does not fail the run) and the
invariants (`must`: a violation fails the run).
"""

from __future__ import annotations

import enum
import json
import math
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from scratch import scratch_database

Cell = float | int | str | None


class Size(enum.Enum):
    FULL = "full"
    QUICK = "quick"
    TINY = "tiny"

    def pick(self, full: Any, quick: Any, tiny: Any) -> Any:
        """The value for this size."""
        return {Size.FULL: full, Size.QUICK: quick, Size.TINY: tiny}[self]


@dataclass
class Context:
    """Where and how large a benchmark runs; `out_dir` holds its JSON and artifacts."""

    name: str
    size: Size
    server_url: str
    where: str
    out_dir: Path

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new, migrated database on the run's server, dropped afterwards."""
        with scratch_database(self.server_url) as url:
            yield url

    def artifact(self, filename: str) -> Path:
        """A file beside this benchmark's JSON (`<out_dir>/<name>/<filename>`), its folder created."""
        path = self.out_dir / self.name / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    unit: str = ""  # "ms", "s", "x" (a ratio), "/s", "%", "" (a count or text)


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    unit: str | None = None  # replaces the columns' units, ratios excepted (a count in a table of ms)

    def unit_for(self, column: Column) -> str:
        return column.unit if self.unit is None or column.unit == "x" else self.unit


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)

    def add(self, label: str, /, **cells: Cell) -> Row:
        return self.add_in(None, label, **cells)

    def add_in(self, unit: str | None, label: str, /, **cells: Cell) -> Row:
        """A row whose figures are in `unit` rather than their columns' units (ratios excepted)."""
        row = Row(label, cells, unit)
        self.rows.append(row)
        return row

    def cell(self, label: str, key: str) -> Cell:
        for row in self.rows:
            if row.label == label:
                return row.cells.get(key)
        raise KeyError(f"no row {label!r} in table {self.title!r}")


@dataclass
class Check:
    """A target (`kind="target"`) or an invariant (`kind="must"`): `value op limit`."""

    name: str
    value: float | None
    op: Literal["<=", ">=", "=="]
    limit: float
    kind: Literal["target", "must"] = "target"
    unit: str = "x"

    @property
    def met(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == ">=":
            return self.value >= self.limit
        return self.value == self.limit


@dataclass
class Result:
    title: str
    about: str
    params: dict[str, Any]
    tables: list[Table]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    show: list[str] = field(default_factory=list)  # artifacts worth embedding in BENCHMARKS.md


def ratio(value: Cell, baseline: Cell) -> float | None:
    """value / baseline, or None when either is missing or the baseline is zero."""
    if not isinstance(value, int | float) or not isinstance(baseline, int | float) or not baseline:
        return None
    return float(value) / float(baseline)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and max of `values` (milliseconds, usually)."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def format_cell(value: Cell, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if unit == "x":
        return f"{value:.3f}x" if abs(value) < 0.1 else f"{value:.2f}x"
    if unit == "%":
        return f"{value:.0f}%"
    if isinstance(value, float) and unit == "" and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}{unit if unit in ('/s', 's') else ''}".replace(",", " ")
    magnitude = abs(value)
    digits = 3 if magnitude < 1 else 2 if magnitude < 10 else 1 if magnitude < 1000 else 0
    suffix = {"ms": " ms", "s": " s", "/s": "/s"}.get(unit, "")
    return f"{value:,.{digits}f}".replace(",", " ") + suffix


def render_table(table: Table) -> str:
    """The table as aligned plain text."""
    header = ["", *(c.title for c in table.columns)]
    body = [
        [row.label, *(format_cell(row.cells.get(c.key), row.unit_for(c)) for c in table.columns)]
        for row in table.rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join([table.title, line(header), *(line(cells) for cells in body)])


def render_checks(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        verdict = "ok" if check.met else ("MISSED" if check.kind == "target" else "FAILED")
        lines.append(
            f"  [{verdict:^6}] {check.name}: {format_cell(check.value, check.unit)} "
            f"(needs {check.op} {format_cell(check.limit, check.unit)})"
        )
    return "\n".join(lines)


def render(name: str, result: Result) -> str:
    """Everything a benchmark prints: its tables, checks and notes."""
    parts = [f"== {name}: {result.title}"]
    parts += [render_table(table) for table in result.tables]
    if result.checks:
        parts.append("checks:\n" + render_checks(result.checks))
    parts += [f"note: {note}" for note in result.notes]
    return "\n\n".join(parts)


def result_json(name: str, result: Result, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document written for one benchmark (report.py reads it back)."""
    return {
        "benchmark": name,
        **meta,
        "title": result.title,
        "about": result.about,
        "params": result.params,
        "tables": [
            {
                "title": table.title,
                "columns": [asdict(column) for column in table.columns],
                "rows": [{"label": row.label, "cells": row.cells, "unit": row.unit} for row in table.rows],
            }
            for table in result.tables
        ],
        "checks": [{**asdict(check), "met": check.met} for check in result.checks],
        "notes": result.notes,
        "artifacts": result.artifacts,
        "show": result.show,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, default=str) + "\n")
    partial.replace(path)
