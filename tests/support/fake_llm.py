"""An OpenAI-compatible HTTP server that takes its time: `OPENAI_BASE_URL` for function servers run as
processes (end-to-end tests, benchmarks), where no client transport can be injected.

    with SlowLLM(delay=3.0).running() as llm:     # llm.base_url -> http://127.0.0.1:PORT/v1
        ...                                       # POST {base_url}/chat/completions answers after 3 s

Every chat completion is answered with a valid plan after `delay` seconds; `calls` counts them and
`started` records when each began (`on_call` runs then, e.g. to kill the worker that made the call).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.openai_fakes import VALID_PLAN


def chat_completion(content: dict[str, Any], *, model: str = "fake-llm-1") -> dict[str, Any]:
    """The body of a chat completion whose message is `content` as JSON (structured output)."""
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": json.dumps(content), "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 800, "completion_tokens": 300, "total_tokens": 1100},
    }


class SlowLLM:
    """Answers POST .../chat/completions with `VALID_PLAN` after `delay` seconds, many at once."""

    def __init__(self, delay: float, *, on_call: Callable[[int], None] | None = None) -> None:
        self.delay = delay
        self.on_call = on_call
        self.started: list[float] = []
        self._lock = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.endswith("/chat/completions"):
                    self._answer(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                with llm._lock:
                    llm.started.append(time.monotonic())
                    number = len(llm.started)
                if llm.on_call is not None:
                    llm.on_call(number)
                time.sleep(llm.delay)
                self._answer(200, chat_completion(VALID_PLAN))

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller was killed or gave up while we slept

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.started)

    @contextmanager
    def running(self) -> Iterator[SlowLLM]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
