"""With Cloud Tasks the demo's progress has a `queued` stage: the webhook has answered and the request waits
in the task queue for its worker."""

from __future__ import annotations

from planbus.devstack.render import QUEUED_STAGES, progress_line, timeline


def test_a_queued_request_shows_between_pending_and_processing() -> None:
    line = progress_line("queued", 0.2, stages=QUEUED_STAGES)
    assert line == "  ● pending ─ ◉ queued ─ ○ processing ─ ○ completed   0.2 s"


def test_a_failed_request_ends_the_queued_stages_with_failed() -> None:
    line = progress_line("failed", 9.0, stages=QUEUED_STAGES)
    assert line == "  ● pending ─ ● queued ─ ● processing ─ ◉ failed   9.0 s"


def test_the_timeline_names_the_queued_stage_even_between_two_polls() -> None:
    seen = {"pending": 0.0, "processing": 0.31, "completed": 3.2}
    assert timeline(seen, "completed", stages=QUEUED_STAGES) == (
        "  pending at 0.00 s → queued (between two polls) → processing at 0.31 s → completed at 3.20 s"
    )
