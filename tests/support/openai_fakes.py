"""An OpenAI chat completions endpoint at the HTTP level, for the openai client's httpx2 transport.

Answers are queued (the last one repeats); every request is recorded so tests can assert what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx2

Answer = httpx2.Response | Exception | Callable[[httpx2.Request], httpx2.Response]

VALID_PLAN: dict[str, Any] = {
    "summary": "Open with a warm note about the Difference Engine, then book a call.",
    "steps": [
        {
            "day_offset": 0,
            "channel": "telegram",
            "action": "Send Ada a short note about the engine demo",
            "message_draft": "Hi Ada, loved your notes on the engine. Could we talk this week?",
            "goal": "Get a reply",
        },
        {
            "day_offset": 3,
            "channel": "email",
            "action": "Email a one-page summary of the automation pilot",
            "message_draft": "Hi Ada, as promised, here is the one-pager on the pilot.",
            "goal": "Show value",
        },
        {
            "day_offset": 7,
            "channel": "call",
            "action": "Call Ada to agree on a pilot scope",
            "message_draft": "Hi Ada, calling about the pilot: do you have five minutes?",
            "goal": "Book a scoping meeting",
        },
    ],
}


class FakeOpenAI:
    """Plays queued answers to chat completion requests and records the requests."""

    def __init__(self, *answers: Answer, delay: float = 0.0) -> None:
        self.answers = list(answers) or [completion(VALID_PLAN)]
        self.requests: list[httpx2.Request] = []
        self.delay = delay
        self._lock = threading.Lock()

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.delay:
            time.sleep(self.delay)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handler))

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


def completion(
    content: dict[str, Any] | str | None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    model: str = "gpt-5-mini-2026-08-07",
) -> httpx2.Response:
    """A chat completion as the API returns it (content given as an object is JSON-encoded)."""
    text = json.dumps(content) if isinstance(content, dict) else content
    return httpx2.Response(
        200,
        json={
            "id": "chatcmpl-test-1",
            "object": "chat.completion",
            "created": 1_790_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": text, "refusal": refusal},
                }
            ],
            "usage": {"prompt_tokens": 812, "completion_tokens": 345, "total_tokens": 1157},
        },
    )


def api_error(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> httpx2.Response:
    """An error answer in the API's `{"error": {...}}` shape."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
    return httpx2.Response(status, json=body, headers=headers)


def timeout(request: httpx2.Request) -> httpx2.Response:
    """The server never answers in time."""
    raise httpx2.ReadTimeout("timed out", request=request)
