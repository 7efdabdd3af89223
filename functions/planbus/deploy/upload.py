"""What `gcloud functions deploy --source=functions --ignore-file=../infra/gcloudignore` uploads.

The rules are gcloud's own (`gcloud topic gcloudignore`, and its gcloudignore module): .gitignore syntax,
read pattern by pattern in order, the last pattern that matches a path deciding; a pattern matches a
path from its right end, part by part with fnmatch, so `name` matches at any depth while `/name` matches
at the top only; `**` stands for any number of parts; `!` re-includes; a trailing `/` matches folders
only; and once a folder is ignored nothing inside it can be re-included. Unlike git, a slash inside a
pattern does not anchor it: `planbus/cli.py` would also match `x/planbus/cli.py`.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from planbus.errors import ConfigurationError

_ODD_BACKSLASHES = re.compile(r"(?<!\\)\\(\\\\)*$")


class Match(enum.Enum):
    INCLUDE = "include"
    IGNORE = "ignore"
    NONE = "none"


def _strip_unescaped_spaces(line: str) -> str:
    end = len(line)
    while end and line[end - 1] == " " and not _ODD_BACKSLASHES.search(line[: end - 1]):
        end -= 1
    return line[:end].replace("\\ ", " ")


def _prefixes(path: str) -> list[str]:
    """'' and every leading part of `path`, ending with `path` itself: '', 'a', 'a/b'."""
    parts = path.split("/") if path else []
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class Pattern:
    """One line of an ignore file."""

    parts: tuple[str, ...]
    negated: bool
    folders_only: bool

    @classmethod
    def parse(cls, line: str) -> Pattern | None:
        """The pattern of a line; None for a blank line or a comment."""
        if line.startswith("#") and line[1:].lstrip().startswith("!include:"):
            raise ConfigurationError(f"gcloudignore: {line!r}: #!include is not used by planbus's upload")
        handled = _strip_unescaped_spaces(line)
        if line.startswith("#") or not handled or _ODD_BACKSLASHES.search(handled):
            return None
        negated = line.startswith("!")
        line = line[1:] if negated else line
        folders_only = line.endswith("/")
        line = _strip_unescaped_spaces(line[:-1] if folders_only else line)
        line = re.sub(r"\\([^\\])", r"\1", line).replace("\\\\", "\\")
        return cls(tuple(line.split("/")), negated, folders_only) if line else None

    def matches(self, path: str, *, is_dir: bool) -> Match:
        if self.folders_only and not is_dir:
            return Match.NONE
        if _matches(list(self.parts), path):
            return Match.INCLUDE if self.negated else Match.IGNORE
        return Match.NONE


def _matches(parts: list[str], path: str | None) -> bool:
    """Whether the pattern's parts match the path, from the right; None is above the top folder."""
    if not parts:
        return True
    if path is None:
        return False
    *rest, last_part = parts
    head, _, tail = path.rpartition("/")
    above: str | None = head if tail else None
    if last_part == "**":
        if not (rest and rest[0] == ""):
            rest.insert(0, "")
        return any(_matches(list(rest), prefix) for prefix in _prefixes(path))
    return fnmatch.fnmatch(tail, last_part) and _matches(rest, above)


@dataclass(frozen=True)
class IgnoreFile:
    patterns: tuple[Pattern, ...]

    @classmethod
    def read(cls, path: Path) -> IgnoreFile:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls(tuple(p for p in map(Pattern.parse, lines) if p is not None))

    def includes(self, path: str, *, is_dir: bool = False) -> bool:
        """Whether the path (relative to the uploaded folder, with /) is uploaded."""
        state = dict.fromkeys(_prefixes(path), Match.NONE)
        for pattern in self.patterns:
            parent = Match.NONE
            for prefix in state:
                match = parent
                if parent is Match.NONE:
                    match = pattern.matches(prefix, is_dir=prefix != path or is_dir)
                if match is not Match.NONE:
                    state[prefix] = match
                parent = Match.IGNORE if state[prefix] is Match.IGNORE else match
        return state[path] is not Match.IGNORE


def uploaded_files(source: Path, ignore_file: Path) -> list[str]:
    """The files of `source` gcloud uploads with this ignore file, relative, sorted."""
    rules = IgnoreFile.read(ignore_file)
    kept = []
    for folder, dirs, files in os.walk(source):
        relative = Path(folder).relative_to(source).as_posix()
        relative = "" if relative == "." else relative + "/"
        dirs[:] = [d for d in dirs if rules.includes(relative + d, is_dir=not Path(folder, d).is_symlink())]
        kept += [relative + name for name in files if rules.includes(relative + name)]
    return sorted(kept)


@dataclass(frozen=True)
class UploadSize:
    files: int
    lines: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.files} files, {self.lines} lines, {self.bytes} bytes"


def upload_size(source: Path, ignore_file: Path) -> UploadSize:
    """How much every function uploads."""
    files = uploaded_files(source, ignore_file)
    data = [(source / name).read_bytes() for name in files]
    return UploadSize(len(files), sum(chunk.count(b"\n") for chunk in data), sum(map(len, data)))
