"""What the local HTTP fakes share (the recording endpoint, the slow or faulty LLM, Telegram): a server on
127.0.0.1 and a free port, served from a daemon thread, and a JSON answer.

    class Handler(JSONHandler):
        def do_POST(self) -> None: self.send_json(200, {"ok": True})

    server = LocalServer(Handler)
    with server.running(): ...             # or server.start() ... server.stop()
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (one that gave up waiting, or was killed) is expected: no traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    """A threading HTTP server on 127.0.0.1, on a port of its own, serving between start() and stop()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Serving for the block."""
        self.start()
        try:
            yield
        finally:
            self.stop()


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and writes no log line per request."""

    def send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Answer `body` as JSON with `status` and `headers`; a caller that has hung up is no error."""
        payload = json.dumps(body).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None
