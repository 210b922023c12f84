"""The training stage's entry point: check the curated set, then train with the configured backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.training.outputs import TrainingResult

if TYPE_CHECKING:
    from zirelia_local.training.live_identity import EpochJudge


def run_training(config: ZireliaConfig, *, dry_run: bool = False, live: EpochJudge | None = None) -> TrainingResult:
    """Train the persona LoRA with the configured backend, on the set curation kept.

    `live` judges each sampled epoch's images while training runs (the live identity curve and the early stop
    it drives). Training cannot import the critic, a later stage: the caller passes `critic.live_judge(config)`
    (`zirelia train`, the pipeline); without it, training runs every epoch and draws no curve.
    """
    from zirelia_local.curate import check_curation_for_training

    check_curation_for_training(config, dry_run=dry_run)
    if config.train.backend == "kohya":
        from zirelia_local.training.kohya import train_kohya

        return train_kohya(config, dry_run=dry_run, live=live)
    from zirelia_local.training.diffusers_backend import train_diffusers

    return train_diffusers(config, dry_run=dry_run, live=live)
