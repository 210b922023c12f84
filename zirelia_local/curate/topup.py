"""Top-up rounds: when too few images are the persona, draw more from the next entries of the same plan
(new seeds), with the dataset stage's public API only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info
from zirelia_local.common.files import read_jsonl, write_jsonl
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset import PLAN_NAME, PlannedImage, generate_images, load_dataset_pipeline, plan_images

# A top-up round asks for (missing / acceptance rate so far) images, the rate floored at 25% so a run that
# has kept nothing yet asks for 4x the missing count, plus 20% for the images the next round loses too.
TOP_UP_MIN_RATE = 0.25
TOP_UP_MARGIN = 1.2


def _append_plan(run_dir: Path, entries: Sequence[PlannedImage]) -> None:
    path = run_dir / PLAN_NAME
    existing = list(read_jsonl(path)) if path.is_file() else []
    known = {record["index"] for record in existing}
    write_jsonl(path, existing + [entry.to_record() for entry in entries if entry.index not in known])


def top_up_count(missing: int, passing: int, scanned: int) -> int:
    """How many images a top-up round generates (see TOP_UP_MIN_RATE)."""
    rate = passing / scanned if scanned else 0.0
    return max(1, math.ceil(missing * TOP_UP_MARGIN / max(rate, TOP_UP_MIN_RATE)))


class TopUpGenerator:
    """Loads the dataset's pipeline (FLUX, or FLUX.1 Kontext for an anchored dataset) on first use only, and
    keeps it across top-up rounds."""

    def __init__(self, config: ZireliaConfig, pipe: Any = None) -> None:
        self.config = config
        self.pipe = pipe

    def generate(self, run_dir: Path, manifest: Manifest, entries: Sequence[PlannedImage], round_index: int) -> None:
        """Add `entries` to the run's plan and draw them into the manifest as round `round_index`."""
        if self.pipe is None:
            self.pipe = load_dataset_pipeline(self.config, "for top-up generation")
        _append_plan(run_dir, entries)
        generate_images(self.config, run_dir, entries, manifest, round_index=round_index, pipe=self.pipe)


def finish_interrupted_top_up(
    config: ZireliaConfig, run_dir: Path, manifest: Manifest, generator: TopUpGenerator
) -> None:
    """Generate top-up images a killed run planned but did not draw (same plan entries, same seeds)."""
    leftover = [r for r in manifest if r.get("status") != "generated" and r.get("index", 0) >= config.dataset.count]
    if not leftover:
        return
    first, last = min(r["index"] for r in leftover), max(r["index"] for r in leftover)
    wanted = {r["index"] for r in leftover}
    entries = [
        e for e in plan_images(config.persona, config.dataset, start=first, count=last - first + 1) if e.index in wanted
    ]
    info(f"finishing {len(entries)} top-up image(s) an interrupted run planned")
    generator.generate(run_dir, manifest, entries, max(int(r.get("round", 1)) for r in leftover))


def run_top_up_round(
    config: ZireliaConfig,
    run_dir: Path,
    manifest: Manifest,
    generator: TopUpGenerator,
    *,
    passing: int,
    scanned: int,
    round_index: int,
) -> None:
    """Draw one top-up round: enough new plan entries (after the manifest's last) to reach the target."""
    target = config.curate_target
    count = top_up_count(target - passing, passing, scanned)
    start = max((int(r.get("index", 0)) for r in manifest), default=-1) + 1
    info(
        f"top-up round {round_index}/{config.curate.top_up_rounds}: {passing} of {target} image(s) kept so far, "
        f"generating {count} more (plan entries {start}-{start + count - 1}, new seeds)"
    )
    entries = plan_images(config.persona, config.dataset, start=start, count=count)
    generator.generate(run_dir, manifest, entries, round_index)
