"""Stage 1, the dataset: plan the persona's images, draw them with FLUX, write kohya captions.

Later stages use only the names below (curation's top-ups draw with `generate_images`; the critic loads the
generator with `load_generator_pipeline` and builds prompts with `evaluation_prompt`).
"""

from zirelia_local.dataset.captions import evaluation_prompt, run_caption, selected_records, write_training_set
from zirelia_local.dataset.flux import load_generator_pipeline, release_pipeline_memory
from zirelia_local.dataset.generation import GenerationResult, generate_images, render_batch
from zirelia_local.dataset.plan import PLAN_NAME, PlannedImage, plan_images
from zirelia_local.dataset.stage import DatasetResult, run_dataset

__all__ = [
    "PLAN_NAME",
    "DatasetResult",
    "GenerationResult",
    "PlannedImage",
    "evaluation_prompt",
    "generate_images",
    "load_generator_pipeline",
    "plan_images",
    "release_pipeline_memory",
    "render_batch",
    "run_caption",
    "run_dataset",
    "selected_records",
    "write_training_set",
]
