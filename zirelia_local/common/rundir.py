"""The run directory: where every stage reads and writes, and the lock that keeps two runs apart."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes, remove_stale_temp_files

LOCK_NAME = ".lock"
CONFIG_SNAPSHOT = "config.toml"
# What the pre-flight checks found (or that they were skipped), per stage; written by doctor/preflight.py.
PREFLIGHT_NAME = "preflight.json"


def prepare_run_dir(config: ZireliaConfig) -> Path:
    """Create the run directory and keep a copy of the config that produced it."""
    run_dir = config.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ZireliaError(f"cannot create the run directory {run_dir}: {error.strerror}") from None
    if config.source is not None and config.source.is_file():
        from zirelia_local.common.security import redact_toml

        atomic_write_bytes(run_dir / CONFIG_SNAPSHOT, redact_toml(config.source.read_text(encoding="utf-8")).encode())
    return run_dir


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory; a second process on the same run fails at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ZireliaError(
                f"another zirelia process is working in {run_dir}",
                hint="wait for it to finish, or use another run directory (--run-dir)",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # No other writer can be at work now: whatever a killed run left half-written goes.
        remove_stale_temp_files(run_dir, recursive=True)
        yield
    finally:
        os.close(fd)
