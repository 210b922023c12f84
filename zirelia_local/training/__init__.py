"""Stage 3, training: launch kohya sd-scripts, or run the built-in diffusers+peft FLUX trainer."""

from zirelia_local.training.stage import TrainingResult, run_training

__all__ = ["TrainingResult", "run_training"]
