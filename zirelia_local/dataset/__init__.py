"""Stage 1, the dataset: plan the persona's images, draw them with FLUX, write kohya captions.

Later stages use only the names below (curation's top-ups draw with `generate_images`; the critic loads the
generator with `load_generator_pipeline` and builds prompts with `evaluation_prompt`;
training and the critic's live judge read the sample prompts from `sample_prompts`).
"""

from zirelia_local.dataset.captions import (
    SamplePrompt,
    evaluation_prompt,
    run_caption,
    sample_prompts,
    sample_size,
    selected_records,
    write_training_set,
)
from zirelia_local.dataset.flux import load_generator_pipeline, release_pipeline_memory
from zirelia_local.dataset.generation import GenerationResult, generate_images, render_batch
from zirelia_local.dataset.plan import PLAN_NAME, PlannedImage, plan_images
from zirelia_local.dataset.stage import DatasetResult, run_dataset

__all__ = [
    "PLAN_NAME",
    "DatasetResult",
    "GenerationResult",
    "PlannedImage",
    "SamplePrompt",
    "evaluation_prompt",
    "generate_images",
    "load_generator_pipeline",
    "plan_images",
    "release_pipeline_memory",
    "render_batch",
    "run_caption",
    "run_dataset",
    "sample_prompts",
    "sample_size",
    "selected_records",
    "write_training_set",
]
