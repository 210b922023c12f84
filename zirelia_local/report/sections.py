"""Read a run directory into the plain dicts and lists that `templates/report.html.j2` lays out.

One function per section of the page. Each reads only files the stages wrote, so the report can be rebuilt at
any time, on a finished run or half of one; a stage that has not run gives an empty or None section, and the
template says so. No HTML is made here: the template escapes every value (user text included), so these
functions return raw text. Every key the template reads is always present (the environment is StrictUndefined).
Lists are sorted or kept in file order, never in set or hash order, so the same run gives the same page.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import defaultdict
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.files import read_json_object, read_jsonl
from zirelia_local.common.paths import display_path
from zirelia_local.common.rundir import PREFLIGHT_NAME
from zirelia_local.common.security import redact, redact_toml
from zirelia_local.report.render import data_uri, thumbnail_uri
from zirelia_local.training.step_time import STEP_SECONDS, median_from_metrics, step_time_text

CONTACT_SHEET = "contact_sheet.png"
CURATION_LOG = "curation.jsonl"
TRAIN_METRICS = "train/metrics.jsonl"
MAX_CURATION_ROWS = 300
MAX_COMMAND_FILE = 20_000
# The stages in run order, as `zirelia <stage>` names them.
STAGE_NAMES = ("dataset", "curate", "train", "critic", "report")
# The per-attempt scores the grid shows; a missing one prints as "-".
SCORE_KEYS = (
    "faces",
    "identity_distance",
    "identity_similarity",
    "clip_score",
    "sharpness",
    "brightness",
    "face_size",
)


def read_jsonl_if_present(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, or [] when the stage that writes it has not run."""
    return list(read_jsonl(path)) if path.is_file() else []


def summary(selection: dict[str, Any] | None, run_dir: Path) -> dict[str, Any] | None:
    """The chosen epoch, why, and how many evaluation images the critic accepted; None before the critic ran."""
    if selection is None:
        return None
    table = selection.get("table", [])
    best = run_dir / "best.safetensors"
    return {
        "epoch": selection.get("epoch"),
        "lora": selection.get("lora"),
        "best": best.name if best.is_file() else None,
        "reason": selection.get("reason"),
        # "identity": chosen on the scores; anything else is a fallback (no face confirmed in any image).
        "chosen_by_scores": selection.get("basis") == "identity",
        "accepted": sum(row.get("accepted", 0) for row in table),
        "images": sum(row.get("images", 0) for row in table),
    }


def dataset(run_dir: Path) -> dict[str, Any]:
    """The contact sheet (a data URI, or None before curation) and the curation decisions with their reasons."""
    sheet = run_dir / CONTACT_SHEET
    records = read_jsonl_if_present(run_dir / CURATION_LOG)
    rejected = [record for record in records if not record.get("kept")]
    reasons: dict[str, int] = defaultdict(int)
    for record in rejected:
        reasons[str(record.get("reason") or "no reason recorded")] += 1
    return {
        "contact_sheet_name": CONTACT_SHEET,
        "contact_sheet": data_uri(sheet.read_bytes(), "image/png") if sheet.is_file() else None,
        "log_name": CURATION_LOG,
        "total": len(records),
        "kept": len(records) - len(rejected),
        "rejected": len(rejected),
        # Most frequent first; sorted() is stable, so ties keep the order they first appear in the log.
        "reasons": sorted(reasons.items(), key=lambda item: -item[1]),
        "rows": [
            {
                # a photo's own name when it could not be imported: shown escaped (newlines, odd bytes)
                "file": display_path(str(record.get("file"))),
                "kept": bool(record.get("kept")),
                "reason": record.get("reason") or "",
                "detail": record.get("detail") or "",
                "distance": record.get("distance"),
            }
            for record in records[:MAX_CURATION_ROWS]
        ],
        "more": max(len(records) - MAX_CURATION_ROWS, 0),
    }


def live_curve(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The live identity curve (the newest record per epoch) and the early stop, if training stopped early."""
    by_epoch = {m["epoch"]: m for m in metrics if m.get("event") == "identity" and isinstance(m.get("epoch"), int)}
    stop = next((m for m in reversed(metrics) if m.get("event") == "early_stop"), None)
    rows = [
        {key: by_epoch[epoch].get(key) for key in ("epoch", "identity", "faces", "images", "defects", "accepted")}
        | {"summary": by_epoch[epoch].get("summary", "")}
        for epoch in sorted(by_epoch)
    ]
    early_stop = None
    if stop is not None:
        early_stop = {key: stop.get(key) for key in ("epoch", "epochs", "best_epoch", "reason", "rule")}
    return {"live": rows, "early_stop": early_stop}


def training(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Step count, epoch range and the last loss from train/metrics.jsonl (steps None before training), with the
    live identity curve and the early stop (`live_curve`)."""
    if not metrics:
        return {"metrics_name": TRAIN_METRICS, "steps": None, "live": [], "early_stop": None}
    # metrics.jsonl also holds event lines (cache use, epoch ends): count the step lines only
    steps = [m for m in metrics if m.get("step") is not None and "event" not in m]
    losses = [m for m in steps if m.get("loss", m.get("avr_loss")) is not None]
    last = losses[-1] if losses else steps[-1] if steps else {}
    epochs = sorted({m.get("epoch") for m in metrics if m.get("epoch") is not None})
    median = median_from_metrics(steps)
    return {
        "metrics_name": TRAIN_METRICS,
        "steps": len(steps),
        "first_epoch": epochs[0] if epochs else "-",
        "last_epoch": epochs[-1] if epochs else "-",
        "last_loss": last.get("loss", last.get("avr_loss")),
        "last_step": last.get("step"),
        **live_curve(metrics),
        # The figure the progress bar and docs/benchmarks.md quote too (training/step_time.py).
        "step_time": step_time_text(median) or None,
        "step_time_key": STEP_SECONDS,
    }


def preflight(run_dir: Path) -> dict[str, Any]:
    """What the pre-flight checks found before each stage last ran (preflight.json): one row per command that
    checked some of the stages (the whole job checks all five at once), in stage order, with its result:
    passed, passed with warnings, skipped (--skip-checks), or not recorded (a run from before the checks)."""
    stages = (read_json_object(run_dir / PREFLIGHT_NAME) or {}).get("stages") or {}
    rows: list[dict[str, Any]] = []
    by_check: dict[tuple[str, str, str], dict[str, Any]] = {}
    skipped = []
    for stage in STAGE_NAMES:
        entry = stages.get(stage) or {}
        status = entry.get("status") or "not recorded"
        if status == "skipped":
            skipped.append(stage)
        key = (status, entry.get("at") or "", entry.get("command") or "")
        if key in by_check:
            by_check[key]["stages"].append(stage)
            continue
        by_check[key] = {
            "stages": [stage],
            "status": status,
            "at": key[1],
            "command": key[2],
            "warnings": [f"{w.get('name')}: {w.get('detail')}" for w in entry.get("warnings") or []],
        }
        rows.append(by_check[key])
    return {"name": PREFLIGHT_NAME, "rows": rows, "skipped": skipped}


def scores(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """The critic's per-epoch table, how identity and prompt adherence were measured, and the choice."""
    if selection is None:
        return None
    identity = selection.get("identity") or {}
    clip = selection.get("clip") or {}
    reference = identity.get("reference")
    excluded = selection.get("excluded") or {}
    rows = []
    for row in selection.get("table", []):
        epoch = row["epoch"]
        rows.append(
            {
                **{key: row.get(key) for key in ("identity", "identity_with_face", "clip")},
                **{key: row[key] for key in ("epoch", "faces", "images", "accepted_first_try", "accepted", "attempts")},
                "note": "chosen" if epoch == selection.get("epoch") else excluded.get(str(epoch), ""),
            }
        )
    return {
        "identity": {
            "embedder": identity.get("embedder"),
            "reference": {"source": reference.get("source"), "count": reference.get("count")} if reference else None,
            "threshold": identity.get("threshold"),
            "missing": identity.get("missing"),
        },
        "clip": clip.get("source") or f"not scored: {clip.get('unavailable_reason')}",
        "rows": rows,
        "epoch": selection.get("epoch"),
        "reason": selection.get("reason"),
        "search": selection.get("search"),
    }


def _attempt(record: dict[str, Any], run_dir: Path, report_dir: Path) -> dict[str, Any]:
    """One cell of an evaluation grid: the attempt's thumbnail, verdict, scores, reasons and adjustments."""
    image_path = run_dir / record["image"]
    scores_ = record.get("scores") or {}
    return {
        "image": record["image"],
        "thumbnail": thumbnail_uri(image_path),
        # Relative, so the link still works when the run directory is moved or archived whole.
        "link": os.path.relpath(image_path, report_dir),
        "accepted": bool(record.get("accepted")),
        "verdict": record.get("verdict"),
        "attempt": record["attempt"],
        "attempt_seed": record["attempt_seed"],
        "lora_scale": record["lora_scale"],
        "adjusted_prompt": record.get("adjusted_prompt", ""),
        "scores": {key: scores_.get(key) for key in SCORE_KEYS},
        "reasons": list(record.get("reasons", [])),
        "adjustments": list(record.get("adjustments", [])),
        "outcome": record.get("outcome", ""),
    }


def grids(
    records: list[dict[str, Any]], selection: dict[str, Any] | None, run_dir: Path, report_dir: Path
) -> list[dict[str, Any]]:
    """One grid per epoch (in epoch order): a row per evaluation prompt and seed, a column per attempt.

    A row's `cells` has one entry per column; None where that prompt needed fewer retries than another.
    """
    by_epoch: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_epoch[record["epoch"]].append(record)
    chosen = selection.get("epoch") if selection else None
    result = []
    for epoch in sorted(by_epoch):
        attempts = by_epoch[epoch]
        items: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in attempts:
            items[record["item"]].append(record)
        columns = max(record["attempt"] for record in attempts) + 1
        rows = []
        for key in sorted(items):
            group = sorted(items[key], key=lambda r: r["attempt"])
            by_number = {record["attempt"]: record for record in group}
            rows.append(
                {
                    "scene": group[0]["scene"],
                    "seed": group[0]["seed"],
                    "prompt": group[0]["prompt"],
                    "cells": [
                        _attempt(by_number[n], run_dir, report_dir) if n in by_number else None for n in range(columns)
                    ],
                }
            )
        result.append(
            {
                "epoch": epoch,
                "chosen": epoch == chosen,
                "lora": attempts[0].get("lora"),
                "columns": columns,
                "prompts": len(items),
                # an evaluation image counts as accepted when any of its attempts was
                "accepted": sum(1 for group in items.values() if any(r["accepted"] for r in group)),
                "rows": rows,
            }
        )
    return result


def _command_files(run_dir: Path) -> list[tuple[str, str]]:
    """The trainer's command files (train/*command*), tokens redacted, each cut at MAX_COMMAND_FILE characters."""
    found = []
    train = run_dir / "train"
    if train.is_dir():
        for path in sorted(train.iterdir()):
            if "command" in path.name and path.suffix in (".txt", ".sh", ".json", ".toml") and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")[:MAX_COMMAND_FILE]
                found.append((f"train/{path.name}", redact(text)))
    return found


def commands(config: ZireliaConfig, selection: dict[str, Any] | None, run_dir: Path) -> dict[str, Any]:
    """How the run was made and how to make it again: commands, evaluation settings, the config (redacted)."""
    # Quoted for a shell: a path with a space or a newline still pastes as one argument.
    source = shlex.quote(str(config.source if config.source is not None else run_dir / "config.toml"))
    where = shlex.quote(str(run_dir))
    reproduce = [
        f"python -m zirelia_local.train {source} --run-dir {where}",
        "# or stage by stage:",
        *[f"zirelia {stage} {source} --run-dir {where}" for stage in STAGE_NAMES],
    ]
    selection = selection or {}
    settings = selection.get("settings")
    snapshot = run_dir / "config.toml"
    if snapshot.is_file():
        text = redact_toml(snapshot.read_text(encoding="utf-8"))
    else:
        import tomli_w  # only for a run directory without its config snapshot

        text = redact_toml(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
    return {
        "critic": selection.get("command"),
        "reproduce": reproduce,
        "files": _command_files(run_dir),
        "settings": json.dumps(settings, indent=2, ensure_ascii=False) if settings else None,
        "snapshot": snapshot.name if snapshot.is_file() else None,
        "config": text,
    }
