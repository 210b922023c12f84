"""The critic's epoch search against scoring every epoch, on simulated 20-epoch identity curves.

    python benchmarks/bench_epoch_search.py

Each curve rises to a peak at a random epoch (4-18) and then slowly falls; the critic's measurement adds
Gaussian noise (sigma per table row), the live curve (4 sample images instead of 8) 1.5 times as much. For
each search radius and start (the live curve's two best epochs, or every 4th epoch and the last), it prints
how often the search picks the epoch that scoring all 20 picks, and how many epochs it scored on average.
Pure Python on the real `critic.selection` code; a few seconds.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.figures import print_figure
from zirelia_local.critic.selection import EpochScore, live_start, search_epochs, select_epoch

EPOCHS = 20
TRIALS = 400


def table(values: list[float], images: int) -> list[EpochScore]:
    return [
        EpochScore(epoch, images, images, value, value, 0.3, images, images, images)
        for epoch, value in enumerate(values, start=1)
    ]


def main() -> None:
    for sigma in (0.01, 0.015, 0.02):
        for radius in (1, 2, 3):
            for start_kind in ("live", "coarse"):
                matches = scored = 0
                for trial in range(TRIALS):
                    rng = random.Random(trial)
                    peak = rng.randint(4, 18)
                    base = [
                        0.35 + 0.33 * (1 - math.exp(-e / (peak / 3))) - (0.006 * (e - peak) if e > peak else 0)
                        for e in range(1, EPOCHS + 1)
                    ]
                    critic = table([round(v + rng.gauss(0, sigma), 3) for v in base], 8)
                    live = table([round(v + rng.gauss(0, sigma * 1.5), 3) for v in base], 4)
                    by_epoch = {row.epoch: row for row in critic}
                    start = live_start(list(by_epoch), live, max_clip_drop=0.03) if start_kind == "live" else []
                    rows = search_epochs(
                        list(by_epoch), by_epoch.__getitem__, start=start, max_clip_drop=0.03, radius=radius
                    )
                    chosen = select_epoch(rows, max_clip_drop=0.03).epoch
                    matches += chosen == select_epoch(critic, max_clip_drop=0.03).epoch
                    scored += len(rows)
                params = f"sigma {sigma}, radius {radius}, {start_kind} start, {TRIALS} curves"
                print_figure("epoch_search", "same pick as all (share)", matches / TRIALS, params)
                print_figure("epoch_search", "epochs scored of 20", scored / TRIALS, params)


if __name__ == "__main__":
    main()
