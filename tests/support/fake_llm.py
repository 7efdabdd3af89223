"""A local OpenAI-compatible chat completions server, for function servers run as processes (end-to-end
tests, benchmarks), where no client transport can be injected: OPENAI_BASE_URL=llm.base_url.

    with FakeLLM(latency=3.0).running() as llm:           # every call answers a valid plan after 3 s
        ...
    llm = FakeLLM({"ok": 6, "rate_limited": 1, "server_error": 1, "hang": 1, "invalid_json": 1,
                   "refusal": 1}, latency=0.05, hang=5.0, seed=7).start()
    ...; llm.stop(); llm.calls                            # Counter of the answers given, by kind

Each call draws its answer from the mix (weights, with a seeded generator):
    ok             200, a valid engagement plan as structured output
    rate_limited   429 with `retry-after` (seconds) and an OpenAI error body
    server_error   503 with an OpenAI error body
    hang           answers only after `hang` seconds (set it past the client's OPENAI_TIMEOUT)
    invalid_json   200 whose message content is not JSON
    refusal        200 with the model's refusal and no content
`latency` is added to every answer. Calls are counted per kind and per lead (by the lead's name in the
prompt), so a benchmark can tell how many LLM calls each request cost; `started` records when each call
began, and `on_call(n)` runs then for the n-th call (e.g. to kill the worker that made it).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from support.local_http import JSONHandler, LocalServer
from support.openai_fakes import VALID_PLAN

KINDS = ("ok", "rate_limited", "server_error", "hang", "invalid_json", "refusal")
LEAD_NAME = re.compile(r"Lead (\d+)")


class FakeLLM:
    """Answers POST {base_url}/chat/completions as the mix says, many calls at once."""

    def __init__(
        self,
        mix: Mapping[str, float] | None = None,
        *,
        latency: float = 0.0,
        hang: float = 30.0,
        retry_after: float = 1.0,
        seed: int = 0,
        model: str = "fake-llm-1",
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.mix = mix or {"ok": 1.0}
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(
                f"unknown fault kind(s): {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}"
            )
        self.latency = latency
        self.hang = hang
        self.retry_after = retry_after
        self.model = model
        self.on_call = on_call
        self.calls: Counter[str] = Counter()
        self.calls_per_lead: Counter[str] = Counter()
        self.started: list[float] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = LocalServer(self._handler())

    @property
    def base_url(self) -> str:
        return f"{self._server.url}/v1"

    @property
    def call_count(self) -> int:
        """Calls answered or in progress."""
        with self._lock:
            return len(self.started)

    def start(self) -> FakeLLM:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @contextmanager
    def running(self) -> Iterator[FakeLLM]:
        with self._server.running():
            yield self

    def draw(self, prompt: str) -> tuple[str, int]:
        """The answer for a new call, and the call's number (from 1)."""
        with self._lock:
            self.started.append(time.monotonic())
            kinds, weights = zip(*self.mix.items(), strict=True)
            kind: str = self._random.choices(kinds, weights)[0]
            self.calls[kind] += 1
            match = LEAD_NAME.search(prompt)
            self.calls_per_lead[match.group(0) if match else "?"] += 1
            return kind, len(self.started)

    def answer(self, kind: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        if kind == "rate_limited":
            return (
                429,
                {"retry-after": f"{self.retry_after:g}"},
                _error("Rate limit reached", "rate_limit_exceeded"),
            )
        if kind == "server_error":
            return 503, {}, _error("The server is overloaded", None)
        if kind == "hang":
            time.sleep(self.hang)
        content: str | None = json.dumps(VALID_PLAN)
        refusal = None
        if kind == "invalid_json":
            content = '{"summary": "Open with a warm note", "steps": [{"day_offset": 0,'
        elif kind == "refusal":
            content, refusal = None, "I can't help with that request."
        return 200, {}, self._completion(content, refusal)

    def _completion(self, content: str | None, refusal: str | None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                }
            ],
            "usage": {"prompt_tokens": 812, "completion_tokens": 345, "total_tokens": 1157},
        }

    def _handler(self) -> type[JSONHandler]:
        fake = self

        class Handler(JSONHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.endswith("/chat/completions"):
                    self.send_json(404, _error(f"no route {self.path}", None))
                    return
                kind, number = fake.draw(raw.decode(errors="replace"))
                if fake.on_call is not None:
                    fake.on_call(number)
                time.sleep(fake.latency)
                status, headers, body = fake.answer(kind)
                self.send_json(status, body, headers)

        return Handler


def _error(message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
