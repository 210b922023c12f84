"""Stage 3, training: launch kohya sd-scripts, or run the built-in diffusers+peft FLUX trainer.

A caller that can judge images (the top: `zirelia train`, the pipeline) passes an `EpochJudge` for the live
identity curve; the critic's `live_judge` is one.
"""

from zirelia_local.training.live_identity import EpochJudge, JudgedEpoch
from zirelia_local.training.stage import TrainingResult, run_training

__all__ = ["EpochJudge", "JudgedEpoch", "TrainingResult", "run_training"]
