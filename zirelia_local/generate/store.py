"""The output folder of a request, and how a rerun finds the work that is done.

    <out>/<key>.png                   accepted images (prompt, seed, scale, verdict and scores in PNG text chunks)
    <out>/rejected/<key>_a<n>.png     rejected attempts, with --keep-rejected
    <out>/attempts/<key>_a<n>.json    one record per attempt: the state a rerun resumes from
    <out>/results.jsonl               every attempt, one line each (rebuilt from attempts/ at the end)
    <out>/generate.json               the settings the images were made under (LoRA hash, scale, model, critic)
    <out>/index.html                  the gallery

Each attempt's image is written first, then its record, each atomically: a kill between the two leaves an image
without a record, which the rerun removes and draws again (the same seed gives the same image). On a rerun the
records of every item are replayed through the critic's own retry rules: an item with an accepted attempt, or
whose last rejection allows no further retry, is done; any other resumes at the retry that comes next. A record
whose image is missing or does not match its sha256 is dropped with the ones after it, so nothing is trusted
that is not on disk.
"""

from __future__ import annotations

import errno
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import UsageError, ZireliaError
from zirelia_local.common.files import (
    atomic_write_json,
    read_json_object,
    remove_stale_temp_files,
    sha256_file,
    write_jsonl,
)
from zirelia_local.common.paths import describe_os_error, display_path
from zirelia_local.critic import Attempt, Check, Verdict, attempt_outcome, first_attempt, next_attempt
from zirelia_local.generate.prompts import GenerationItem

ATTEMPTS_DIR = "attempts"
REJECTED_DIR = "rejected"
RESULTS_NAME = "results.jsonl"
SETTINGS_NAME = "generate.json"
GALLERY_NAME = "index.html"
#: kept in the attempt files for the gallery, left out of results.jsonl
PRIVATE_FIELDS = ("thumbnail",)


def accepted_path(item_key: str) -> str:
    return f"{item_key}.png"


def rejected_path(item_key: str, attempt: int) -> str:
    return f"{REJECTED_DIR}/{item_key}_a{attempt}.png"


def attempt_file(out: Path, item_key: str, attempt: int) -> Path:
    return out / ATTEMPTS_DIR / f"{item_key}_a{attempt}.json"


def write_attempt(out: Path, record: dict[str, Any]) -> None:
    atomic_write_json(attempt_file(out, record["item"], record["attempt"]), record)


def ensure_out_dir(out: Path) -> Path:
    """Create the output folder; a UsageError naming it when it cannot be one (a file in the way, a place
    where nothing can be written). A full disk is left to the CLI's disk-full message."""
    hint = "give --out a folder you can write to (a missing one is created)"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {display_path(out)} is a file, not a folder", hint=hint)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        why = "no file can be created there" if error.errno == errno.ENOENT else describe_os_error(error)
        raise UsageError(f"cannot use --out {display_path(out)}: {why}", hint=hint) from None
    return out


def claim_folder(out: Path, key: str, values: dict[str, Any]) -> None:
    """Make `out` the folder of these settings; a folder made under other settings is an error, not a mix."""
    ensure_out_dir(out)
    remove_stale_temp_files(out, recursive=True)
    saved = read_json_object(out / SETTINGS_NAME)
    if saved is not None and saved.get("key") != key:
        old = saved.get("settings") or {}
        changed = sorted(name for name in set(old) | set(values) if old.get(name) != values.get(name))
        raise ZireliaError(
            f"{display_path(out)} holds images made under other settings (changed: {', '.join(changed) or 'unknown'})",
            hint="pass another --out folder (or leave --out out: each set of settings gets its own folder), or "
            "delete that folder to draw it again",
        )
    if saved is None:
        atomic_write_json(out / SETTINGS_NAME, {"key": key, "settings": values})


@dataclass
class ResumeState:
    """What a rerun found: the records still valid per item, the items that are done, and where the others
    start again."""

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    start: dict[str, Attempt] = field(default_factory=dict)
    #: attempt records dropped because their image was missing or changed
    dropped: int = 0


def verdict_of(record: dict[str, Any]) -> Verdict:
    """The verdict a record holds, for the retry rules (they read its failures)."""
    return Verdict(checks=[Check(**check) for check in record["checks"]], scores=record.get("scores", {}))


def _image_ok(out: Path, record: dict[str, Any]) -> bool:
    image = record.get("image")
    if image is None:
        return True  # a rejected attempt whose image was not kept
    path = out / image
    try:
        return path.is_file() and sha256_file(path) == record.get("sha256")
    except OSError:
        return False


def resume_state(out: Path, items: Sequence[GenerationItem], config: ZireliaConfig) -> ResumeState:
    """Replay the stored attempts of every item (see the module's docstring). `config` is `draw_config`'s, whose
    `[critic] lora_scale` is the scale of first attempts."""
    state = ResumeState()
    stored: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((out / ATTEMPTS_DIR).glob("*.json")):
        record = read_json_object(path)
        if record is None or "item" not in record or "attempt" not in record:
            path.unlink(missing_ok=True)  # not one of ours, or unreadable: the attempt is drawn again
            continue
        stored.setdefault(record["item"], {})[int(record["attempt"])] = record
    for item in items:
        attempts = stored.pop(item.key, {})
        attempt: Attempt | None = first_attempt(item.scene, item.seed, config.critic)
        kept: list[dict[str, Any]] = []
        while attempt is not None and attempt.number in attempts:
            record = attempts.pop(attempt.number)
            if record.get("attempt_seed") != attempt.seed or not _image_ok(out, record):
                attempts[attempt.number] = record
                break
            kept.append(record)
            verdict = verdict_of(record)
            number, attempt = attempt.number, next_attempt(attempt, verdict, config.critic, item.seed)
            # More (or fewer) retries allowed than when it was drawn: what became of it changes with them.
            outcome = attempt_outcome(verdict, number, attempt, config.critic.max_retries)
            if record.get("outcome") != outcome:
                record["outcome"] = outcome
                write_attempt(out, record)
        for record in attempts.values():  # records after a gap or a bad image: drawn again
            _forget(out, record)
            state.dropped += 1
        state.records[item.key] = kept
        if attempt is None:
            state.done.add(item.key)
        elif attempt.number > 0:
            state.start[item.key] = attempt
    return state


def _forget(out: Path, record: dict[str, Any]) -> None:
    attempt_file(out, record["item"], record["attempt"]).unlink(missing_ok=True)
    if record.get("image"):
        (out / record["image"]).unlink(missing_ok=True)


def remove_orphan_images(out: Path) -> int:
    """Delete images that no attempt record names (a kill between an image and its record): drawn again."""
    records = [read_json_object(path) or {} for path in (out / ATTEMPTS_DIR).glob("*.json")]
    named = {record["image"] for record in records if record.get("image")}
    removed = 0
    for path in [*out.glob("*.png"), *(out / REJECTED_DIR).glob("*.png")]:
        if path.relative_to(out).as_posix() not in named:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_results(out: Path, records: Iterable[dict[str, Any]]) -> Path:
    """results.jsonl: one line per attempt, in request order."""
    public = [{key: value for key, value in record.items() if key not in PRIVATE_FIELDS} for record in records]
    return write_jsonl(out / RESULTS_NAME, public)


def read_settings(out: Path) -> dict[str, Any]:
    return (read_json_object(out / SETTINGS_NAME) or {}).get("settings", {})


def dumps_scores(scores: dict[str, Any]) -> str:
    return json.dumps(scores, sort_keys=True)
