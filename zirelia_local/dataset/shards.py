"""Manifest shards: under a launch of several processes (`common/processes.py`) each process records the
images it drew in its own file, `shards/manifest-<rank>.jsonl`, rewritten atomically after each batch; the
main process merges them into `manifest.jsonl` (in plan order: the manifest's rows were planned before any
image was drawn) and removes them. So no two processes ever write one file, and a launch killed mid-batch
loses only the batches in flight: the next run, on any number of processes, adopts every shard row whose
image is on disk with the recorded sha256 before it decides what is left to draw.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from zirelia_local.common.files import read_jsonl, sha256_file, write_jsonl
from zirelia_local.common.manifest import Manifest

SHARDS_DIR = "shards"

#: The fields a drawing process fills in; everything else of the row was planned by the main process.
DRAWN_FIELDS = ("status", "sha256", "width", "height")


class ShardWriter:
    """One process's record of what it drew, saved whole after every batch."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path = Path(run_dir) / SHARDS_DIR / f"manifest-{rank}.jsonl"
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append({"id": row["id"], **{key: row[key] for key in DRAWN_FIELDS}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.path, self.rows)


def adopt_shards(manifest: Manifest) -> int:
    """Merge every shard row whose image is on disk as recorded into `manifest` (not saved); how many."""
    folder = manifest.run_dir / SHARDS_DIR
    adopted = 0
    for path in sorted(folder.glob("manifest-*.jsonl")) if folder.is_dir() else []:
        for row in read_jsonl(path):
            record = manifest.get(row.get("id", ""))
            if record is None or row.get("status") != "generated":
                continue
            image = manifest.run_dir / record["file"]
            try:
                if not image.is_file() or sha256_file(image) != row.get("sha256"):
                    continue
            except OSError:
                continue
            manifest.upsert({"id": row["id"], **{key: row[key] for key in DRAWN_FIELDS}})
            adopted += 1
    return adopted


def remove_shards(run_dir: Path) -> None:
    """Drop the shards once the manifest that holds their rows is saved."""
    shutil.rmtree(Path(run_dir) / SHARDS_DIR, ignore_errors=True)
