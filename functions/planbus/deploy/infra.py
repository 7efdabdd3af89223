"""infra/functions.conf, infra/schedules.conf and infra/queues.conf: read strictly, every problem
reported at once.

All three are INI files in a strict subset: `[section]`, `key = value` on one line, whole-line `#`
comments. Anything else (unknown or missing keys, malformed values) is refused here, before deploy runs
anything, so every step can take every value as it stands.
"""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from planbus.errors import ConfigurationError

FUNCTION_KEYS = (
    "runtime",
    "memory",
    "cpu",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "access",
    "secrets",
    "calls_llm",
    "batch",
)
SCHEDULE_KEYS = ("function", "schedule", "time_zone", "body", "attempt_deadline")
QUEUE_KEYS = (
    "max_concurrent_dispatches",
    "max_dispatches_per_second",
    "max_attempts",
    "min_backoff",
    "max_backoff",
    "max_doublings",
)
Access = Literal["public", "scheduler", "tasks"]
ACCESS: tuple[Access, ...] = ("public", "scheduler", "tasks")

_TARGET = re.compile(r"^[a-z][a-z0-9_]{2,62}$")
_JOB = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_RUNTIME = re.compile(r"^python3\d{1,2}$")
_MEMORY = re.compile(r"^[1-9]\d*(Mi|Gi)$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\.\d+)$")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,-]+$")
_QUEUE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_RATE = re.compile(r"^(\d+(\.\d+)?|\.\d+)$")


@dataclass(frozen=True)
class FunctionSpec:
    """One deployed function, as infra/functions.conf describes it."""

    target: str
    runtime: str
    memory: str
    cpu: str
    timeout: int
    concurrency: int
    min_instances: int
    max_instances: int
    access: Access
    secrets: tuple[str, ...]
    calls_llm: bool
    batch: bool

    @property
    def name(self) -> str:
        """The function's name in Google Cloud: lower-case letters, digits and hyphens only."""
        return self.target.replace("_", "-")


@dataclass(frozen=True)
class ScheduleSpec:
    """One scheduled call, as infra/schedules.conf describes it."""

    job: str
    function: str
    schedule: str
    time_zone: str
    body: str
    attempt_deadline: int


def _read(path: Path, keys: tuple[str, ...], problems: list[str]) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(
        delimiters=("=",),
        comment_prefixes=("#",),
        inline_comment_prefixes=None,
        interpolation=None,
        default_section="\x00none",
        empty_lines_in_values=False,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such file") from None
    except configparser.Error as exc:
        raise ConfigurationError(f"{path}: {exc.message}") from exc
    sections: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        values = dict(parser[section])
        where = f"{path.name} [{section}]"
        for key in sorted(set(values) - set(keys)):
            problems.append(f"{where}: unknown key {key!r}")
        for key in keys:
            if not values.get(key, "").strip():
                problems.append(f"{where}: {key} is missing")
            elif "\n" in values[key]:
                problems.append(f"{where}: {key} must be one line")
        sections[section] = values
    if not sections:
        problems.append(f"{path.name}: describes nothing")
    return sections


def _integer(where: str, key: str, text: str, low: int, high: int, problems: list[str]) -> int:
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        problems.append(f"{where}: {key} must be a whole number from {low} to {high}, not {text!r}")
        return low
    return int(text)


def _yes_no(where: str, key: str, text: str, problems: list[str]) -> bool:
    if text not in ("yes", "no"):
        problems.append(f"{where}: {key} must be yes or no, not {text!r}")
    return text == "yes"


def load_functions(path: Path, secret_settings: set[str], problems: list[str]) -> list[FunctionSpec]:
    """The functions, in file order; problems are appended to `problems`."""
    specs = []
    for target, values in _read(path, FUNCTION_KEYS, problems).items():
        where = f"{path.name} [{target}]"
        if not all(values.get(key, "").strip() for key in FUNCTION_KEYS):
            continue
        if not _TARGET.match(target):
            problems.append(f"{where}: a target is 3-63 lower-case letters, digits and underscores")
        v = {key: values[key].strip() for key in FUNCTION_KEYS}
        if not _RUNTIME.match(v["runtime"]):
            problems.append(f"{where}: runtime must be a Python runtime such as python312")
        if not _MEMORY.match(v["memory"]):
            problems.append(f"{where}: memory must look like 256Mi or 1Gi, not {v['memory']!r}")
        cpu_ok = bool(_CPU.match(v["cpu"])) and float(v["cpu"]) > 0
        if not cpu_ok:
            problems.append(f"{where}: cpu must be a positive number, not {v['cpu']!r}")
        access = next((a for a in ACCESS if a == v["access"]), None)
        if access is None:
            problems.append(f"{where}: access must be {', '.join(ACCESS)}, not {v['access']!r}")
        secrets = tuple(v["secrets"].split())
        for name in secrets:
            if name not in secret_settings:
                problems.append(
                    f"{where}: {name} is not a secret setting ({', '.join(sorted(secret_settings))})"
                )
        spec = FunctionSpec(
            target=target,
            runtime=v["runtime"],
            memory=v["memory"],
            cpu=v["cpu"],
            timeout=_integer(where, "timeout", v["timeout"], 1, 3600, problems),
            concurrency=_integer(where, "concurrency", v["concurrency"], 1, 1000, problems),
            min_instances=_integer(where, "min_instances", v["min_instances"], 0, 1000, problems),
            max_instances=_integer(where, "max_instances", v["max_instances"], 1, 1000, problems),
            access=access or "public",
            secrets=secrets,
            calls_llm=_yes_no(where, "calls_llm", v["calls_llm"], problems),
            batch=_yes_no(where, "batch", v["batch"], problems),
        )
        if spec.min_instances > spec.max_instances:
            problems.append(f"{where}: min_instances is larger than max_instances")
        if spec.concurrency > 1 and cpu_ok and float(spec.cpu) < 1:
            problems.append(f"{where}: a concurrency above 1 needs cpu = 1 or more")
        specs.append(spec)
    return specs


def load_schedules(path: Path, functions: list[FunctionSpec], problems: list[str]) -> list[ScheduleSpec]:
    """The schedules, in file order; each must call a function of `functions`."""
    by_target = {spec.target: spec for spec in functions}
    specs = []
    for job, values in _read(path, SCHEDULE_KEYS, problems).items():
        where = f"{path.name} [{job}]"
        if not all(values.get(key, "").strip() for key in SCHEDULE_KEYS):
            continue
        v = {key: values[key].strip() for key in SCHEDULE_KEYS}
        if not _JOB.match(job):
            problems.append(f"{where}: a job name is letters, digits, hyphens and underscores")
        target = by_target.get(v["function"])
        if target is None:
            problems.append(f"{where}: function {v['function']!r} is not in functions.conf")
        fields = v["schedule"].split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(field) for field in fields):
            problems.append(f"{where}: schedule must be a five-field cron expression, not {v['schedule']!r}")
        try:
            ZoneInfo(v["time_zone"])
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{where}: time_zone {v['time_zone']!r} is not an IANA time zone")
        try:
            body_ok = isinstance(json.loads(v["body"]), dict)
        except ValueError:
            body_ok = False
        if not body_ok:
            problems.append(f"{where}: body must be a JSON object, not {v['body']!r}")
        high = target.timeout if target is not None and target.timeout >= 15 else 1800
        deadline = _integer(where, "attempt_deadline", v["attempt_deadline"], 15, high, problems)
        specs.append(
            ScheduleSpec(
                job=job,
                function=v["function"],
                schedule=" ".join(fields),
                time_zone=v["time_zone"],
                body=v["body"],
                attempt_deadline=deadline,
            )
        )
    return specs


@dataclass(frozen=True)
class QueueSpec:
    """The Cloud Tasks queue, as infra/queues.conf describes it: its id, rate limits and retry config."""

    queue: str
    max_concurrent_dispatches: int
    max_dispatches_per_second: float
    max_attempts: int
    min_backoff: int
    max_backoff: int
    max_doublings: int

    def flags(self) -> list[str]:
        """The limits as flags of `gcloud tasks queues create` and `update` (durations end in s)."""
        return [
            f"--max-concurrent-dispatches={self.max_concurrent_dispatches}",
            f"--max-dispatches-per-second={self.max_dispatches_per_second:g}",
            f"--max-attempts={self.max_attempts}",
            f"--min-backoff={self.min_backoff}s",
            f"--max-backoff={self.max_backoff}s",
            f"--max-doublings={self.max_doublings}",
        ]


def load_queue(path: Path, problems: list[str]) -> QueueSpec | None:
    """The one queue every kind shares (it is the global cap on concurrent LLM calls)."""
    sections = _read(path, QUEUE_KEYS, problems)
    if len(sections) > 1:
        problems.append(
            f"{path.name}: describe one queue, not {len(sections)}: every kind shares it, which is what "
            "makes max_concurrent_dispatches the cap on concurrent LLM calls"
        )
    for queue, values in sections.items():
        where = f"{path.name} [{queue}]"
        if not all(values.get(key, "").strip() for key in QUEUE_KEYS):
            return None
        v = {key: values[key].strip() for key in QUEUE_KEYS}
        if not _QUEUE.match(queue):
            problems.append(f"{where}: a queue id is 1-100 letters, digits and hyphens")
        rate = float(v["max_dispatches_per_second"]) if _RATE.match(v["max_dispatches_per_second"]) else 0.0
        if not 0 < rate <= 500:
            problems.append(
                f"{where}: max_dispatches_per_second must be a number above 0 and at most 500 (the most "
                f"Cloud Tasks allows), not {v['max_dispatches_per_second']!r}"
            )
        spec = QueueSpec(
            queue=queue,
            max_concurrent_dispatches=_integer(
                where, "max_concurrent_dispatches", v["max_concurrent_dispatches"], 1, 5000, problems
            ),
            max_dispatches_per_second=rate,
            max_attempts=_integer(where, "max_attempts", v["max_attempts"], 1, 100, problems),
            min_backoff=_integer(where, "min_backoff", v["min_backoff"], 1, 3600, problems),
            max_backoff=_integer(where, "max_backoff", v["max_backoff"], 1, 3600, problems),
            max_doublings=_integer(where, "max_doublings", v["max_doublings"], 0, 16, problems),
        )
        if spec.min_backoff > spec.max_backoff:
            problems.append(f"{where}: min_backoff is larger than max_backoff")
        return spec
    return None
