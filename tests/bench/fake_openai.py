"""A local OpenAI-compatible chat completions server with a configurable mix of faults.

    server = FakeOpenAI({"ok": 6, "rate_limited": 1, "server_error": 1, "hang": 1, "invalid_json": 1,
                         "refusal": 1}, latency=0.05, hang=5.0, seed=7).start()
    ... OPENAI_BASE_URL=server.base_url ...          # POST {base_url}/chat/completions
    server.stop(); server.calls                       # Counter of the answers given, by kind

Each call draws its answer from the mix (weights, with a seeded generator):
    ok             200, a valid engagement plan as structured output
    rate_limited   429 with `retry-after` (seconds) and an OpenAI error body
    server_error   503 with an OpenAI error body
    hang           answers only after `hang` seconds (set it past the client's OPENAI_TIMEOUT)
    invalid_json   200 whose message content is not JSON
    refusal        200 with the model's refusal and no content
`latency` is added to every answer. Calls are counted per kind and per lead (by the lead's name in the
prompt), so a benchmark can tell how many LLM calls each request cost.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support.openai_fakes import VALID_PLAN

KINDS = ("ok", "rate_limited", "server_error", "hang", "invalid_json", "refusal")
LEAD_NAME = re.compile(r"Lead (\d+)")


class FakeOpenAI:
    def __init__(
        self,
        mix: Mapping[str, float] | None = None,
        *,
        latency: float = 0.0,
        hang: float = 30.0,
        retry_after: float = 1.0,
        seed: int = 0,
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
        self.calls: Counter[str] = Counter()
        self.calls_per_lead: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self, prompt: str) -> str:
        with self._lock:
            kinds, weights = zip(*self.mix.items(), strict=True)
            kind: str = self._random.choices(kinds, weights)[0]
            self.calls[kind] += 1
            match = LEAD_NAME.search(prompt)
            self.calls_per_lead[match.group(0) if match else "?"] += 1
        return kind

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
        return 200, {}, _completion(content, refusal)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {}, _error(f"no route {self.path}", None))
                    return
                kind = fake.draw(raw.decode(errors="replace"))
                time.sleep(fake.latency)
                status, headers, body = fake.answer(kind)
                # The client may have given up waiting (a hang past its timeout).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(status, headers, body)

            def _send(self, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (one that gave up on a hang) is expected here, not worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _error(message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


def _completion(content: str | None, refusal: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "gpt-5-mini-bench",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {"prompt_tokens": 812, "completion_tokens": 345, "total_tokens": 1157},
    }
