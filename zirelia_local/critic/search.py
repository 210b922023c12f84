"""Which epochs the critic scores: `[critic] epochs = "search"` (the default), "all", "last" or a list.

The search (`selection.search_epochs`) starts from the live identity curve's two best saved epochs, read from
`train/metrics.jsonl` (training judged each epoch's sample images while it ran), or, without a curve with a
face in it, from every 4th saved epoch and the last; then it scores the saved epochs around the best one until
no epoch near the best is left unscored. `cost` says what that came to against scoring every saved epoch.
"""

from __future__ import annotations

from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.critic.selection import EpochScore, coarse_start, live_start


def live_curve(config: ZireliaConfig) -> list[EpochScore]:
    """The live identity curve training wrote (the newest record per epoch); [] when it wrote none."""
    from zirelia_local.training.live_identity import read_curve
    from zirelia_local.training.outputs import train_dir

    return [EpochScore.from_record(record) for record in read_curve(train_dir(config) / "metrics.jsonl")]


def search_start(config: ZireliaConfig, saved: list[int]) -> tuple[list[int], str]:
    """(epochs to score first, where they come from): the live curve's best, or the coarse subset."""
    start = live_start(saved, live_curve(config), max_clip_drop=config.critic.max_clip_drop)
    if start:
        return start, "the live identity curve's best epochs"
    return coarse_start(saved), "every 4th saved epoch and the last (no live identity curve with a face)"


def cost(
    mode: Any,
    saved: list[int],
    scored: list[int],
    records: dict[int, list[dict[str, Any]]],
    items: int,
    start: list[int],
    start_basis: str,
) -> dict[str, Any]:
    """What scoring `scored` (in that order, from `start`) cost, against scoring all `saved` epochs."""
    images = sum(len(records[epoch]) for epoch in scored)
    return {
        "mode": mode,
        "start": start,
        "start_basis": start_basis,
        "saved": sorted(saved),
        "scored": list(scored),
        "images": images,
        "first_tries": items * len(scored),
        "all_first_tries": items * len(saved),
        # retries vary per epoch: the scored epochs' mean, over every saved epoch
        "all_images_estimate": round(images / len(scored) * len(saved)) if scored else 0,
    }
