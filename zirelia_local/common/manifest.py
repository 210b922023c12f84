"""The run's image manifest: `manifest.jsonl`, one JSON object per image.

A record holds at least: `id`, `file` (relative to the run directory), `prompt`, `seed`, `axes`, `width`,
`height`, `sha256`, `status` (`planned` or `generated`), `index` (position in the plan) and `round`
(0 for the first batch, n for the n-th curation top-up). Later stages add their own keys (curation adds
`curation`). The whole file is rewritten atomically on every save, so it is always complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zirelia_local.common.files import read_jsonl, sha256_file, write_jsonl

MANIFEST_NAME = "manifest.jsonl"


class Manifest:
    """Ordered records keyed by image id, backed by a JSON Lines file."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        self._records: dict[str, dict[str, Any]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (another process of the launch has saved it), dropping unsaved changes."""
        self._records = {}
        if self.path.exists():
            for record in read_jsonl(self.path):
                self._records[record["id"]] = record

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._records

    def get(self, image_id: str) -> dict[str, Any] | None:
        return self._records.get(image_id)

    def upsert(self, record: dict[str, Any]) -> None:
        """Insert or merge a record (keys of `record` win); call `save()` to persist."""
        current = self._records.get(record["id"], {})
        self._records[record["id"]] = {**current, **record}

    def save(self) -> None:
        write_jsonl(self.path, self._records.values())

    def generated(self) -> list[dict[str, Any]]:
        return [record for record in self._records.values() if record.get("status") == "generated"]

    def is_verified(self, image_id: str) -> bool:
        """True when the image is recorded as generated and its file exists with the recorded hash."""
        record = self._records.get(image_id)
        if not record or record.get("status") != "generated" or not record.get("sha256"):
            return False
        path = self.run_dir / record["file"]
        try:
            return path.is_file() and sha256_file(path) == record["sha256"]
        except OSError:
            return False
