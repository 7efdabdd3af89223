"""The local stack's terminal output: structured log lines made readable, the progress display, tables."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from planbus.devstack.console import Console, parse_log_line, render_log_line
from planbus.devstack.render import plan_table, progress_line, reminder_table, table, timeline
from planbus.llm.offline import OfflineGenerator
from planbus.models import LeadFacts, PlanResult
from support.devstack_helpers import memory_console


def log_line(**fields: Any) -> str:
    entry = {"severity": "INFO", "message": "plan request completed", "time": "2026-11-27T10:00:00.250+00:00"}
    return json.dumps({**entry, **fields})


def test_a_function_log_line_reads_as_severity_message_and_ids() -> None:
    raw = log_line(logger="planbus.x", request_id="r-1", attempt=2, **{"logging.googleapis.com/trace": "t"})
    severity, text = render_log_line("handle_plan_request", raw)
    assert severity == "INFO"
    assert "handle_plan_request" in text
    assert "INFO    plan request completed  request_id=r-1  attempt=2" in text
    assert "logger" not in text and "trace" not in text and "{" not in text


def test_values_with_spaces_are_quoted_and_exceptions_follow_indented() -> None:
    raw = log_line(severity="ERROR", reason="lease expired", exception="Traceback\n  File x\nBoom")
    severity, text = render_log_line("send_due_reminders", raw)
    assert severity == "ERROR"
    first, *rest = text.splitlines()
    assert first.endswith('reason="lease expired"')
    assert rest == ["    Traceback", "      File x", "    Boom"]


def test_other_output_passes_through_with_its_source() -> None:
    severity, text = render_log_line("telegram_auth", "[2026-11-27] [ERROR] Worker failed to boot.\n")
    assert severity == "INFO"
    assert text.endswith("telegram_auth         | [2026-11-27] [ERROR] Worker failed to boot.")
    assert parse_log_line('{"no": "message"}') is None
    assert parse_log_line("{not json") is None


def test_the_console_drops_lines_below_its_threshold() -> None:
    buffer = io.StringIO()
    console = Console(buffer, min_severity="WARNING")
    console.output("f", log_line())
    console.output("f", log_line(severity="WARNING", message="slow"))
    console.event("relay", "INFO", "delivered")
    console.event("relay", "ERROR", "gave up", request_id="r")
    console.line("narrative always shows")
    out = buffer.getvalue()
    assert "slow" in out and "gave up  request_id=r" in out and "narrative always shows" in out
    assert "plan request completed" not in out and "delivered" not in out


def test_status_changes_print_once_each_when_output_is_not_a_terminal() -> None:
    console, buffer = memory_console()
    for text in ("pending", "pending", "processing", None, "completed"):
        console.status(text)
    assert buffer.getvalue().splitlines() == ["pending", "processing", "completed"]
    assert console.interactive is False


def test_on_a_terminal_the_status_line_is_redrawn_below_other_output() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    console = Console(screen, color=False)
    console.status("◉ pending")
    console.line("a log line")
    console.status(None)
    assert screen.getvalue() == "\r\x1b[K◉ pending" + "\r\x1b[Ka log line\n◉ pending" + "\r\x1b[K"


def test_progress_marks_done_current_and_future_stages() -> None:
    assert progress_line("processing", 0.42) == "  ● pending ─ ◉ processing ─ ○ completed   0.4 s"
    assert progress_line("failed", 3.0, spinner="⠋") == "  ⠋ ● pending ─ ● processing ─ ◉ failed   3.0 s"


def test_the_timeline_names_a_stage_passed_between_two_polls() -> None:
    line = timeline({"pending": 0.0, "completed": 0.2}, "completed")
    assert line == "  pending at 0.00 s → processing (between two polls) → completed at 0.20 s"


def test_a_table_wraps_its_last_column_under_itself() -> None:
    text = table(["n", "words"], [["1", "alpha beta gamma delta epsilon zeta eta theta"]], width=30)
    lines = text.splitlines()
    assert lines[0] == "  n  words"
    assert all(len(line) <= 30 for line in lines)
    assert lines[3].startswith("     ") and lines[3].strip()


def test_a_plan_prints_as_its_summary_and_a_step_table() -> None:
    lead = LeadFacts(id="6a11664b-6e99-4386-9de4-8ce6816ce611", full_name="Maya Chen", company="Northwind")
    generation = OfflineGenerator().generate(lead, today=date(2026, 11, 27))
    result = PlanResult(
        plan=generation.plan,
        generator="offline",
        model=generation.model,
        usage=None,
        latency_ms=3,
        generated_at=datetime.now(UTC),
        attempt=1,
    ).model_dump(mode="json")
    text = plan_table(result, width=100)
    assert "Maya" in text.splitlines()[0]
    assert "step  when" in text
    # Steps are numbered from 1 on screen, as the reminder messages ("Step 1 of the engagement plan") say.
    for index, step in enumerate(generation.plan.steps):
        assert f"  {index + 1}     day {step.day_offset}" in text
    assert text.rstrip().endswith(f"generated by offline ({generation.model}), 3 ms")


def test_reminders_print_one_row_each_with_how_they_were_delivered() -> None:
    due = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    rows = [
        {
            "step_index": 0,
            "due_at": due,
            "status": "sent",
            "delivered_via": "outbox",
            "text": "Call Maya\nmore",
        },
        {"step_index": 1, "due_at": due + timedelta(days=2), "status": "scheduled", "text": "Email"},
    ]
    lines = reminder_table(rows, width=120).splitlines()
    assert lines[2].split()[0] == "1" and "sent (outbox)" in lines[2] and lines[2].endswith("Call Maya")
    assert lines[3].split()[0] == "2" and "scheduled" in lines[3]
