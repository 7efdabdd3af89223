"""Where a deployment's values come from: the env file (`.env.deploy`, or `--env FILE`), or, without one,
the environment.

The env file's grammar: `NAME=value` a line (an `export ` in front is allowed); blank lines and lines
starting with `#` are skipped; the value is taken literally ($, #, spaces and backslashes included), with
the surrounding spaces dropped and one pair of surrounding quotes removed. Nothing is expanded or
executed, and a name set twice is refused rather than silently overridden.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from planbus.errors import ConfigurationError

_SKIP = re.compile(r"^\s*(#.*)?$")
_PAIR = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_QUOTED = re.compile(r'^"(.*)"$|^\'(.*)\'$', re.DOTALL)
# Every name infra/env.example lists, set or commented out.
_DOCUMENTED = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
COPY_HINT = "copy infra/env.example to .env.deploy and fill it in, or pass --env FILE"


@dataclass(frozen=True)
class Values:
    """A deployment's NAME=value pairs, and where they were read."""

    values: dict[str, str]
    source: str
    file: Path | None


def parse_env_file(path: Path) -> dict[str, str]:
    """The pairs of an env file, in file order; ConfigurationError names the file and line of a problem."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"no env file at {path}: {COPY_HINT}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if _SKIP.match(line):
            continue
        pair = _PAIR.match(line)
        if pair is None:
            raise ConfigurationError(f"{path}:{number}: expected NAME=value")
        name, value = pair.group(1), pair.group(2).strip()
        quoted = _QUOTED.match(value)
        if quoted:
            value = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
        if name in values:
            raise ConfigurationError(f"{path}:{number}: {name} is set twice")
        values[name] = value
    return values


def from_environment(example: Path, environ: Mapping[str, str], leave_out: Collection[str]) -> dict[str, str]:
    """Every variable infra/env.example names that the environment sets, except `leave_out`."""
    names = dict.fromkeys(_DOCUMENTED.findall(example.read_text(encoding="utf-8")))
    return {name: environ[name] for name in names if name in environ and name not in leave_out}


def load_values(
    env_file: Path | None,
    default_file: Path,
    infra: Path,
    environ: Mapping[str, str],
    leave_out: Collection[str],
) -> Values:
    """The env file when one is given or `default_file` exists, else the environment."""
    if env_file is not None or default_file.exists():
        path = env_file or default_file
        return Values(parse_env_file(path), str(path), path)
    values = from_environment(infra / "env.example", environ, leave_out)
    if not values:
        raise ConfigurationError(
            f"no env file at {default_file} and no planbus variable in the environment: {COPY_HINT}"
        )
    return Values(values, f"the environment (no {default_file})", None)
