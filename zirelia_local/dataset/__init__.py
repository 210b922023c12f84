"""Stage 1, the dataset: plan the persona's images, draw them with FLUX (or, identity-anchored, with FLUX.1
Kontext from one anchor portrait), write kohya captions.

Later stages use only the names below (curation's top-ups draw with `generate_images` and
`load_dataset_pipeline`, and judge identity by the anchor from `read_anchor`; the critic loads the generator
with `load_generator_pipeline` and builds prompts with `evaluation_prompt`; training and the critic's live
judge read the sample prompts from `sample_prompts`; the report shows the anchor).
"""

from zirelia_local.dataset.anchor import ANCHOR_IMAGE, ANCHOR_INFO, Anchor, read_anchor
from zirelia_local.dataset.captions import (
    SamplePrompt,
    TrainingSet,
    evaluation_prompt,
    run_caption,
    sample_prompts,
    sample_size,
    selected_records,
    write_training_set,
)
from zirelia_local.dataset.flux import load_dataset_pipeline, load_generator_pipeline, release_pipeline_memory
from zirelia_local.dataset.generation import GenerationResult, generate_images, render_batch
from zirelia_local.dataset.plan import PLAN_NAME, PlannedImage, plan_images
from zirelia_local.dataset.stage import DatasetResult, ensure_anchor, run_dataset

__all__ = [
    "ANCHOR_IMAGE",
    "ANCHOR_INFO",
    "PLAN_NAME",
    "Anchor",
    "DatasetResult",
    "GenerationResult",
    "PlannedImage",
    "SamplePrompt",
    "TrainingSet",
    "ensure_anchor",
    "evaluation_prompt",
    "generate_images",
    "load_dataset_pipeline",
    "load_generator_pipeline",
    "plan_images",
    "read_anchor",
    "release_pipeline_memory",
    "render_batch",
    "run_caption",
    "run_dataset",
    "sample_prompts",
    "sample_size",
    "selected_records",
    "write_training_set",
]
