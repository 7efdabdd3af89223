"""How a function server answers while its PostgreSQL is down, and how soon it serves again once it is back.

    .venv/bin/python tests/bench/bench_outage.py [--outage 40] [--clients 4] [--pause 0.2]
                                                [--source functions/main.py]

Starts an embedded PostgreSQL of its own (tests/support/outage.py; never the shared server), a
`functions-framework --target handle_plan_request` server process (gunicorn, as deployed) on it, and
`--clients` threads that each POST a webhook for an unknown request id in a loop (`--pause` s apart): the
function claims nothing and answers 200 `skipped`, or 503 when the database is unreachable. After a few
seconds the server is stopped (pg_ctl stop -m fast) for `--outage` seconds and started again on the same
port. Reports how long the 503s took during the outage and the time from the database being ready (its
first successful connection) to the function's first 200. `--source` runs another checkout's main.py
(with PYTHONPATH pointing at its functions/ folder) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planbus.devstack.stack import server_command
from planbus.devstack.supervisor import free_port, http_ready
from support.outage import Answer, Answers, outage_server, summary

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
SECRET = "outage-bench-secret"


def client(url: str, answers: Answers, stop: threading.Event, pause: float) -> None:
    with httpx.Client(timeout=120) as http:
        while not stop.is_set():
            body = {
                "type": "INSERT",
                "table": "plan_requests",
                "schema": "public",
                "record": {"id": str(uuid.uuid4())},
                "old_record": None,
            }
            sent = time.monotonic()
            try:
                status = http.post(url, json=body, headers={"X-Webhook-Secret": SECRET}).status_code
            except httpx.HTTPError:
                status = 0
            answers.add(Answer(sent, time.monotonic(), status))
            stop.wait(pause)


def main() -> int:
    parser = argparse.ArgumentParser(description="503 latency during a database outage, and recovery time")
    parser.add_argument("--outage", type=float, default=40.0, help="seconds the database stays down")
    parser.add_argument("--clients", type=int, default=4, help="concurrent callers")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between one caller's requests")
    parser.add_argument("--after", type=float, default=25.0, help="seconds to keep calling after the restart")
    parser.add_argument("--source", type=Path, default=MAIN, help="the main.py to serve")
    args = parser.parse_args()

    with outage_server() as pg, tempfile.TemporaryDirectory() as folder:
        port = free_port()
        log_path = Path(folder) / "function.log"
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "WEBHOOK_SECRET": SECRET,
            "PLAN_GENERATOR": "offline",
        }
        with log_path.open("w") as log:
            server = subprocess.Popen(
                server_command("handle_plan_request", args.source.resolve(), "127.0.0.1", port),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            probe = http_ready(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 30
            while not probe():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the function server did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            answers = Answers()
            stop = threading.Event()
            callers = [
                threading.Thread(target=client, args=(f"http://127.0.0.1:{port}/", answers, stop, args.pause))
                for _ in range(args.clients)
            ]
            for caller in callers:
                caller.start()
            time.sleep(3)
            pg.stop()
            time.sleep(args.outage)
            pg.start()
            time.sleep(args.after)
            stop.set()
            for caller in callers:
                caller.join()
        finally:
            server.terminate()
            server.wait(30)
        lines = log_path.read_text().splitlines()

    figures = summary(answers, pg.stopped_at, pg.ready_at)
    before = [a.seconds for a in answers.sent_between(0, pg.stopped_at) if a.status == 200]
    not_json = [line for line in lines if not _is_json(line)]
    print(f"source: {args.source}; {args.clients} callers, {args.pause:g} s apart; outage {args.outage:g} s")
    print(f"before the outage: {len(before)} answers 200, slowest {max(before, default=0):.3f} s")
    print(json.dumps(figures, indent=2))
    print(f"function log: {len(lines)} lines, {len(not_json)} not JSON")
    for line in not_json[:5]:
        print(f"  {line[:160]}")
    return 0


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
