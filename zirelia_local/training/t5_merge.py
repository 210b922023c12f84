"""One T5-XXL file for sd-scripts, merged from the two shards of a diffusers FLUX repository's text_encoder_2/.

sd-scripts' T5-XXL loader (`library.flux_utils.load_t5xxl`) reads a single safetensors file whose keys are
those of transformers' `T5EncoderModel`, which is exactly what the repository's shards hold between them.
Merging is a byte copy: every tensor keeps its name, dtype, shape and bytes; only the header is new. The
header records a fingerprint of the shards it came from, so a later run reuses the file when its size and
header match, and merges again when the shards changed.

The file is about 9.5 GB, so it is streamed, not built in memory and not written through
`common.files.atomic_write_*`: the copy goes to `<target>.partial` and is renamed onto the target only when
complete, so a kill never leaves a partial file under the target's name. A rerun after a kill continues
the partial file where it stopped (its header must match the plan exactly, else it starts over). Free disk
space is checked before the copy starts; a lock on the folder keeps two processes from merging at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zirelia_local.common.errors import ZireliaError

INDEX_NAME = "model.safetensors.index.json"
FINGERPRINT_KEY = "zirelia_merged_from"
PARTIAL_SUFFIX = ".partial"
#: Headroom kept free on the disk beyond the bytes still to write.
DISK_MARGIN_BYTES = 256 * 2**20
#: Bytes per read/write while copying (a progress update each).
CHUNK_BYTES = 64 * 2**20
_MAX_HEADER_BYTES = 100 * 2**20
# Bytes per element, to order tensors as safetensors itself does (largest dtype first keeps each aligned).
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2, "U16": 2}
GB = 1000**3


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the merged file: where its bytes are in its shard."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: Path
    start: int  # absolute byte offset in the shard
    length: int


@dataclass(frozen=True)
class T5Merge:
    """What merging `folder`'s shards into `target` writes: the header, then each tensor's bytes in order."""

    folder: Path
    shards: tuple[Path, ...]
    target: Path
    fingerprint: str
    tensors: tuple[TensorSource, ...]
    header: bytes  # the 8-byte length prefix and the JSON header, padded to a multiple of 8

    @property
    def total_bytes(self) -> int:
        return len(self.header) + sum(tensor.length for tensor in self.tensors)

    @property
    def partial(self) -> Path:
        return self.target.with_name(self.target.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class MergeOutcome:
    reused: bool  # the target was already complete and current: nothing written
    resumed_from: int  # bytes of a partial file from an earlier, interrupted merge that were kept
    copied: int  # bytes written by this call


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, the header) of a safetensors file; ValueError if it is not one."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        size = int.from_bytes(prefix, "little")
        if size > _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file")
        header = json.loads(handle.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path} has no safetensors header")
    return 8 + size, header


def shard_fingerprint(files: list[Path]) -> str:
    """Name, size, modification time and link target of each file: cheap, and it changes when a file is
    replaced (in the Hugging Face cache a file links to a blob named by its content hash)."""
    parts = []
    for path in files:
        stat = path.stat()
        parts.append([path.name, os.path.basename(os.path.realpath(path)), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def shard_names(folder: Path, index_name: str = INDEX_NAME) -> list[str]:
    """The shard files `folder`'s index names (ValueError when the index is unreadable)."""
    index = json.loads((folder / index_name).read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{folder / index_name} has no weight_map")
    return sorted(set(weight_map.values()))


def plan_t5_merge(folder: Path, target: Path) -> T5Merge:
    """Read `folder`'s index and shard headers and lay out the merged file; ZireliaError when they disagree
    or a shard is truncated (an interrupted download)."""
    redownload = "download text_encoder_2/ again (hf download <repo> --include 'text_encoder_2/*')"
    try:
        weight_map = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"]
        names = shard_names(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ZireliaError(
            f"cannot read the T5-XXL shard index {folder / INDEX_NAME}: {error}", hint=redownload
        ) from None
    shards = [folder / name for name in names]
    tensors: list[TensorSource] = []
    for shard in shards:
        try:
            data_start, header = read_safetensors_header(shard)
        except (OSError, ValueError) as error:
            raise ZireliaError(f"cannot read the T5-XXL shard {shard}: {error}", hint=redownload) from None
        data_end = data_start
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            if weight_map.get(name) != shard.name:
                raise ZireliaError(f"{shard} holds {name}, which {INDEX_NAME} places elsewhere", hint=redownload)
            tensors.append(
                TensorSource(name, entry["dtype"], tuple(entry["shape"]), shard, data_start + begin, end - begin)
            )
            data_end = max(data_end, data_start + end)
        if shard.stat().st_size < data_end:
            raise ZireliaError(f"the T5-XXL shard {shard} is truncated (an interrupted download?)", hint=redownload)
    found = {tensor.name for tensor in tensors}
    if len(found) != len(tensors) or found != set(weight_map):
        missing = sorted(set(weight_map) - found)[:3]
        raise ZireliaError(
            f"the T5-XXL shards in {folder} do not match {INDEX_NAME}"
            + (f" (missing {', '.join(missing)})" if missing else " (a tensor is in two shards)"),
            hint=redownload,
        )
    tensors.sort(key=lambda tensor: (-_DTYPE_BYTES.get(tensor.dtype, 1), tensor.name))
    fingerprint = shard_fingerprint([folder / INDEX_NAME, *shards])
    return T5Merge(folder, tuple(shards), target, fingerprint, tuple(tensors), _header(tensors, fingerprint))


def _header(tensors: list[TensorSource], fingerprint: str) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt", FINGERPRINT_KEY: fingerprint}}
    offset = 0
    for tensor in tensors:
        entries[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.length],
        }
        offset += tensor.length
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text


def merged_is_current(plan: T5Merge) -> bool:
    """The target exists, has the planned size and starts with the planned header (the same fingerprint)."""
    try:
        if plan.target.stat().st_size != plan.total_bytes:
            return False
        with open(plan.target, "rb") as handle:
            return handle.read(len(plan.header)) == plan.header
    except OSError:
        return False


def _resume_offset(plan: T5Merge) -> int:
    """Bytes of an earlier partial file that can be kept: all of them when its header is the planned one."""
    try:
        size = plan.partial.stat().st_size
        with open(plan.partial, "rb") as handle:
            same = handle.read(len(plan.header)) == plan.header
    except OSError:
        return 0
    return min(size, plan.total_bytes) if same else 0


def check_free_space(folder: Path, needed: int) -> None:
    """ZireliaError when `folder`'s disk has less than `needed` bytes (plus a margin) free."""
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise ZireliaError(
            f"not enough disk space to merge T5-XXL into one file: {needed / GB:.1f} GB needed in {folder}, "
            f"{free / GB:.1f} GB free",
            hint="free space there, point ZIRELIA_CACHE at a larger disk, or set [train] t5xxl to a single T5-XXL "
            "file (t5xxl_fp16.safetensors from comfyanonymous/flux_text_encoders)",
        )


@contextmanager
def _folder_lock(folder: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def merge_t5_shards(
    plan: T5Merge,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int], None] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> MergeOutcome:
    """Write the merged file (resuming a partial one), unless it is already current.

    `on_progress(n)` is called with the bytes of each chunk written (and once with the bytes kept from a
    partial file); `on_wait()` once if another process holds the folder's lock.
    """
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(plan.target.parent, on_wait):
        if merged_is_current(plan):
            return MergeOutcome(reused=True, resumed_from=0, copied=0)
        kept = _resume_offset(plan)
        check_free_space(plan.target.parent, plan.total_bytes - kept)
        descriptor = os.open(plan.partial, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(descriptor, "r+b") as out:
            out.truncate(kept)
            out.seek(kept)
            if kept < len(plan.header):
                out.truncate(0)
                out.seek(0)
                out.write(plan.header)
                kept = 0
            elif on_progress is not None:
                on_progress(kept)
            copied = _copy_tensors(plan, out, max(kept, len(plan.header)), chunk_bytes, on_progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(plan.partial, plan.target)
        _fsync_folder(plan.target.parent)
    return MergeOutcome(reused=False, resumed_from=kept, copied=copied + (len(plan.header) if kept == 0 else 0))


def _copy_tensors(
    plan: T5Merge, out: BinaryIO, offset: int, chunk_bytes: int, on_progress: Callable[[int], None] | None
) -> int:
    """Copy every tensor's bytes that lie at or after `offset` in the merged file; returns the bytes written."""
    written = 0
    position = len(plan.header)
    handles: dict[Path, BinaryIO] = {}
    try:
        for tensor in plan.tensors:
            begin, position = position, position + tensor.length
            if position <= offset:
                continue
            skip = max(0, offset - begin)
            if tensor.shard not in handles:
                handles[tensor.shard] = open(tensor.shard, "rb")  # closed below, all at once
            source = handles[tensor.shard]
            source.seek(tensor.start + skip)
            remaining = tensor.length - skip
            while remaining:
                chunk = source.read(min(chunk_bytes, remaining))
                if not chunk:
                    raise ZireliaError(f"{tensor.shard} ended early while merging T5-XXL (was it replaced?)")
                out.write(chunk)
                remaining -= len(chunk)
                written += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
    finally:
        for handle in handles.values():
            handle.close()
    return written


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
