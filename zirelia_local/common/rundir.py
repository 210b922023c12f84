"""The run directory: where every stage reads and writes, and the lock that keeps two runs apart.

The run directory is a path the user gives (`--run-dir`, `[run] dir`, or `runs/<trigger_word>` in the
folder they run from), so it is checked where it enters: `ensure_run_dir` creates it or says, as a
UsageError (exit code 2), why it cannot be one (a file is in the way, a read-only file system, a place no
one can write), before any stage starts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import UsageError, ZireliaError
from zirelia_local.common.files import atomic_write_bytes, remove_stale_temp_files
from zirelia_local.common.paths import describe_os_error, display_path
from zirelia_local.common.processes import LOCK_HELD_ENV, is_main_process, wait_for_everyone

LOCK_NAME = ".lock"
CONFIG_SNAPSHOT = "config.toml"
RUN_DIR_HINT = "give --run-dir (or [run] dir) a folder you can write to (a missing one is created)"
# A full disk is not the run directory's fault: the CLI says "the disk is full" for these.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def run_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be a run directory, judged without creating anything (a file in the way, or a
    path that is not UTF-8 text), or None. Whether it can be written is only known by writing."""
    try:
        os.fspath(run_dir).encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8, and sd-scripts' dataset.toml (UTF-8 text) must name it"
    if run_dir.exists() and not run_dir.is_dir():
        return "is a file, not a folder"
    for parent in run_dir.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot be created: {display_path(parent)} is a file, not a folder"
    return None


def run_dir_write_problem(run_dir: Path) -> str | None:
    """`run_dir_problem`, then whether a file can be written where the run directory is (or would be
    created): a nameless temporary file, gone when closed, so nothing is left behind. For `zirelia doctor`,
    which checks without creating the run directory."""
    problem = run_dir_problem(run_dir)
    if problem is not None:
        return problem
    folder = run_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        why = "no file can be created there" if error.errno == errno.ENOENT else describe_os_error(error)
        return f"cannot write in {display_path(folder)}: {why}"
    return None


def require_usable_run_dir(run_dir: Path) -> None:
    """A UsageError (exit 2) naming `run_dir` when it cannot be a run directory, found without creating
    anything: commands call it before their pre-flight, so a wrong --run-dir is a usage error, said first."""
    problem = run_dir_write_problem(run_dir)
    if problem is not None:
        raise _unusable(run_dir, problem)


def _unusable(run_dir: Path, what: str) -> UsageError:
    return UsageError(f"cannot use {display_path(run_dir)} as the run directory: {what}", hint=RUN_DIR_HINT)


def _write_error(run_dir: Path, error: OSError, doing: str) -> UsageError:
    why = describe_os_error(error)
    if error.errno == errno.ENOENT:  # the folder is there, yet a file in it cannot be made: /proc, /sys
        why = "no file can be created there"
    return _unusable(run_dir, f"cannot {doing}: {why}")


def ensure_run_dir(run_dir: Path) -> Path:
    """Create `run_dir` (and its parents) if needed; a UsageError naming it and the reason when it cannot
    be a run directory."""
    problem = run_dir_problem(run_dir)
    if problem is not None:
        raise _unusable(run_dir, problem)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise  # the CLI's disk-full message says what to do
        # The folder that failed may be a parent of the run directory: name it.
        failed = "" if error.filename in (None, os.fspath(run_dir)) else f" ({display_path(error.filename)})"
        raise _unusable(run_dir, f"cannot create it{failed}: {describe_os_error(error)}") from None
    return run_dir


# What the pre-flight checks found (or that they were skipped), per stage; written by doctor/preflight.py.
PREFLIGHT_NAME = "preflight.json"


def prepare_run_dir(config: ZireliaConfig) -> Path:
    """Create the run directory and keep a copy of the config that produced it."""
    run_dir = ensure_run_dir(config.run_dir)
    if config.source is not None and config.source.is_file() and is_main_process():
        from zirelia_local.common.security import redact_toml

        snapshot = redact_toml(config.source.read_text(encoding="utf-8")).encode()
        try:
            atomic_write_bytes(run_dir / CONFIG_SNAPSHOT, snapshot)
        except IsADirectoryError:
            raise _unusable(run_dir, f"{CONFIG_SNAPSHOT} in it is a folder; remove that folder") from None
        except OSError as error:
            if error.errno in _DISK_FULL:
                raise
            raise _write_error(run_dir, error, f"write {CONFIG_SNAPSHOT} in it") from None
    return run_dir


def lock_passed_to_child(run_dir: Path) -> dict[str, str]:
    """The environment entry with which the lock holder starts a child that works under its lock on `run_dir`
    (scale.py's training child): the child takes no lock and runs no pre-flight (`lock_held_by_parent`)."""
    return {LOCK_HELD_ENV: str(run_dir.resolve())}


def lock_held_by_parent(run_dir: Path) -> bool:
    """Whether this process is a child that the main process of a launch started under its lock on `run_dir`
    (scale.py): that process has taken the lock and run the pre-flight for the whole job."""
    return os.environ.get(LOCK_HELD_ENV) == lock_passed_to_child(run_dir)[LOCK_HELD_ENV]


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory; a second process on the same run fails at once.

    Under a launch of several processes (`common/processes.py`) the main process holds the lock for them
    all: the others wait until it has it (and has swept what a killed run left), then work beside it. A child
    the main process starts under its lock (`LOCK_HELD_ENV` names the run directory) takes none.
    """
    ensure_run_dir(run_dir)
    if lock_held_by_parent(run_dir):
        yield
        return
    if not is_main_process():
        wait_for_everyone()  # the main process has the lock, or failed to get it and ended the launch
        yield
        return
    lock = run_dir / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except IsADirectoryError:
        raise _unusable(run_dir, f"its lock file {LOCK_NAME} is a folder; remove that folder") from None
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise
        raise _write_error(run_dir, error, f"write its lock file {LOCK_NAME}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ZireliaError(
                f"another zirelia process is working in {display_path(run_dir)}",
                hint="wait for it to finish, or use another run directory (--run-dir)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # No other writer can be at work now: whatever a killed run left half-written goes.
        remove_stale_temp_files(run_dir, recursive=True)
        wait_for_everyone()
        yield
    finally:
        os.close(fd)
