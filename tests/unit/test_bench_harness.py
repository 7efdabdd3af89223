"""The benchmark suite's own pieces: statistics, checks, formatting, choosing benchmarks, the fake LLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import Check, Column, Size, Table, format_cell, percentile, ratio, render_table
from run import BENCHMARKS, selected

from support.fake_llm import KINDS, FakeLLM


def test_percentile_interpolates_between_neighbours() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_ratio_is_none_without_a_baseline() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_check_compares_by_its_operator_and_a_missing_value_never_meets_it() -> None:
    assert Check("fast", 1.2, "<=", 1.3).met
    assert not Check("fast", 1.4, "<=", 1.3).met
    assert Check("enough", 0.9, ">=", 0.8).met
    assert Check("none lost", 0.0, "==", 0.0, "must").met
    assert not Check("unmeasured", None, "<=", 1.3).met


def test_size_picks_its_own_value() -> None:
    assert [size.pick(1, 2, 3) for size in Size] == [1, 2, 3]


def test_cells_are_formatted_by_unit_and_a_row_can_override_it() -> None:
    assert format_cell(1.234, "x") == "1.23x"
    assert format_cell(0.004, "x") == "0.004x"
    assert format_cell(12.345, "ms") == "12.3 ms"
    assert format_cell(1500, "") == "1 500"
    assert format_cell(None, "ms") == "-"
    table = Table("t", [Column("a", "a", "ms"), Column("r", "r", "x")])
    table.add("timed", a=2.5, r=1.5)
    table.add_in("", "counted", a=4.0, r=2.0)
    text = render_table(table)
    assert "2.50 ms" in text and "1.50x" in text
    assert "4 " in text.splitlines()[-1] and "2.00x" in text.splitlines()[-1]


def test_only_names_the_benchmarks_to_run_and_refuses_unknown_ones() -> None:
    assert selected([]) == list(BENCHMARKS)
    assert selected(["scale,insert"]) == ["insert", "scale"]
    with pytest.raises(SystemExit, match="unknown benchmark\\(s\\): nosuch"):
        selected(["scale", "nosuch"])


def test_the_fake_llm_refuses_an_unknown_fault() -> None:
    with pytest.raises(ValueError, match="unknown fault kind\\(s\\): teapot"):
        FakeLLM({"teapot": 1.0})


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "hang"])
def test_the_fake_llm_answers_each_fault_as_documented(kind: str) -> None:
    fake = FakeLLM({kind: 1.0}, retry_after=2.0).start()
    try:
        response = httpx.post(f"{fake.base_url}/chat/completions", json={"messages": [{"content": "Lead 7"}]})
    finally:
        fake.stop()
    assert fake.calls == {kind: 1} and fake.calls_per_lead == {"Lead 7": 1}
    if kind == "rate_limited":
        assert response.status_code == 429 and response.headers["retry-after"] == "2"
        return
    if kind == "server_error":
        assert response.status_code == 503
        return
    message = response.json()["choices"][0]["message"]
    if kind == "refusal":
        assert message["content"] is None and message["refusal"]
    elif kind == "invalid_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads(message["content"])
    else:
        assert json.loads(message["content"])["steps"]


def test_the_report_says_how_far_a_missed_target_is() -> None:
    from report import verdict

    def check(value: float | None, op: str, limit: float, kind: str = "target") -> dict[str, object]:
        met = Check("c", value, op, limit, kind).met  # type: ignore[arg-type]
        return {"value": value, "op": op, "limit": limit, "kind": kind, "unit": "x", "met": met}

    assert verdict(check(1.1, "<=", 1.3)) == "met"
    assert verdict(check(2.6, "<=", 1.3)) == "**missed**: 2.0x the limit"
    assert verdict(check(0.6, ">=", 0.8)) == "**missed**: 25.0% short"
    assert verdict(check(None, "<=", 1.3)) == "**missed** (not measured)"
    assert verdict(check(3.0, "==", 0.0, "must")) == "**FAILED**"
