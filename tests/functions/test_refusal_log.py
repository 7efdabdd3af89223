"""A refused webhook (401) leaves a WARNING with the caller's address and the path, never a secret: not
the wrong one presented (header, bearer or `?token=`), not the right one."""

from __future__ import annotations

import logging

import pytest

from support import mini_app

SECRET = "right-webhook-secret-4c3b2a19"
WRONG = "wrong-webhook-secret-8d7e6f50"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/", {"X-Webhook-Secret": WRONG}),
        ("/", {"Authorization": f"Bearer {WRONG}"}),
        (f"/?token={WRONG}", {}),
        ("/", {}),
    ],
    ids=["header", "bearer", "query", "none"],
)
@pytest.mark.parametrize("target", ["handle_plan_request", "process_draft_request", "send_due_reminders"])
def test_a_refused_call_is_logged_with_caller_and_path_but_no_secret(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    target: str,
    path: str,
    headers: dict[str, str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    caplog.set_level(logging.INFO)

    response = mini_app.client(target).post(
        path, json={}, headers={**headers, "X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    )

    assert response.status_code == 401
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused:")]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.WARNING
    assert getattr(refusals[0], "fields", None) == {"caller": "203.0.113.7", "path": "/"}
    out, err = capfd.readouterr()
    written = out + err + caplog.text + repr([vars(r) for r in caplog.records])
    assert "203.0.113.7" in out, "the JSON line carries the caller"
    assert WRONG not in written
    assert SECRET not in written
