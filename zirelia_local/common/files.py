"""Crash-safe file writing and the run directory's JSON Lines files.

Every file a stage writes goes through `atomic_write_bytes`: the bytes land in a temporary file in the
same folder, are flushed to disk, and replace the target with one `os.replace`. A kill or a full disk at
any moment leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from zirelia_local.common.errors import ZireliaError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder + fsync + rename).

    `durable=False` skips the fsyncs (still atomic: readers see the old or the new file) for files that are
    cheap to recompute and are checked on every run, such as captions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the file the mode a plain open() would (0666 minus umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Includes KeyboardInterrupt and OSError(ENOSPC): never leave the temp file behind.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def json_text(value: Any, **options: Any) -> str:
    """`value` as JSON text (keys sorted), non-ASCII kept readable; a value holding a file name that is not
    UTF-8 (a str with surrogate escapes, which UTF-8 cannot encode) is written ASCII-escaped instead, which
    `json.loads` reads back to the very same name."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, sort_keys=True, ensure_ascii=True, **options)
    return text


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> Path:
    return atomic_write_text(path, json_text(value, indent=2) + "\n")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """Delete what killed writers left behind: temp files `.<name>.<random>.tmp` and staging folders
    `.<name>.tmp`, in `folder` (and below it when `recursive`). Only safe while no writer runs there, e.g.
    under the run lock. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def png_bytes(image: Any, metadata: dict[str, str] | None = None) -> bytes:
    """Encode a PIL image as PNG, with text chunks (prompt, seed) so the file documents itself."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json_text(record) + "\n" for record in records)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Write a whole JSON Lines file atomically."""
    return atomic_write_text(path, dumps_jsonl(records))


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Read a JSON Lines file; a line that is not a JSON object is an error naming file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ZireliaError(
                    f"{path}:{number} is not valid JSON ({error.msg})",
                    hint="this file is written by zirelia-local; if it was edited by hand, fix or delete the line",
                ) from None
            if not isinstance(record, dict):
                raise ZireliaError(f"{path}:{number} is not a JSON object")
            yield record


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from `path`; None when the file is missing, unreadable or not an object (a stage that
    finds no usable earlier result does the work again)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record to a log-style JSON Lines file (metrics, events), flushed at once.

    Only for logs that tolerate losing the last line in a crash; state files use `write_jsonl`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json_text(record) + "\n")
        handle.flush()


def link_or_copy(source: Path, target: Path) -> None:
    """Place `source` at `target` as a hard link (no extra disk), or an atomic copy across filesystems.

    Nothing is done when `target` already is `source` (the same inode): POSIX `rename` of one hard link
    over another of the same file succeeds without doing anything, which would leave the temp link behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if _same_file(source, target):
        return
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write_bytes(target, source.read_bytes())
        return
    try:
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # still there when the rename was a no-op (a link raced in) or failed


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False
