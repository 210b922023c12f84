"""The dataset stage: (anchor ->) plan -> generate -> captions, all under the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info
from zirelia_local.common.files import write_jsonl
from zirelia_local.common.manifest import Manifest
from zirelia_local.common.rundir import prepare_run_dir
from zirelia_local.dataset.anchor import Anchor, anchor_from_photo, anchor_photo_path, photo_key, reusable_anchor
from zirelia_local.dataset.captions import TrainingSet, write_training_set
from zirelia_local.dataset.generation import GenerationResult, generate_images
from zirelia_local.dataset.plan import PLAN_NAME, plan_images
from zirelia_local.faces import FaceEmbedder


@dataclass
class DatasetResult:
    run_dir: Path
    planned: int
    generation: GenerationResult
    training_set: TrainingSet
    #: the portrait every image was made from (`[dataset] identity = "anchor"`), else None
    anchor: Anchor | None = None


def ensure_anchor(config: ZireliaConfig, run_dir: Path, *, embedder: FaceEmbedder | None = None) -> Anchor:
    """The run's anchor portrait: reused when it was made for the same photo (or prompt, seeds and model),
    else checked and copied from `[dataset] anchor_image`, or drawn; see `dataset.anchor`.

    A photo is checked before any model is loaded, so a photo with no face or two faces costs nothing.
    """
    from zirelia_local.dataset.anchor_candidates import draw_anchor, drawn_key
    from zirelia_local.faces import load_embedder

    if config.dataset.anchor_image is not None:
        anchor_photo_path(config)  # a missing file is a config error, before anything else
        key = photo_key(config)
    else:
        key = drawn_key(config)
    existing = reusable_anchor(run_dir, key)
    if existing is not None:
        info(f"anchor: {existing.path} ({existing.info.get('source')}) already made for this config")
        return existing
    embedder = embedder or load_embedder(config.curate)
    if config.dataset.anchor_image is not None:
        return anchor_from_photo(config, run_dir, embedder)
    return draw_anchor(config, run_dir, embedder)


def run_dataset(config: ZireliaConfig, *, embedder: FaceEmbedder | None = None) -> DatasetResult:
    """Plan the dataset, generate what is missing, and write captions + sd-scripts files.

    `result.generation.pipe` is the pipeline it loaded (None when every image was already there): the
    curation stage's top-up rounds reuse it instead of loading FLUX (or FLUX.1 Kontext) again. With
    `[dataset] identity = "anchor"` the anchor portrait is made first (`embedder`, if given, checks its face).
    """
    run_dir = prepare_run_dir(config)
    anchor = ensure_anchor(config, run_dir, embedder=embedder) if config.dataset.identity == "anchor" else None
    entries = plan_images(config.persona, config.dataset)
    manifest = Manifest(run_dir)
    # Keep entries that earlier top-up rounds added beyond the first `count`.
    extra = [r for r in manifest if r.get("index", 0) >= config.dataset.count]
    plan_records = [e.to_record() for e in entries]
    if extra:
        extra_entries = plan_images(
            config.persona,
            config.dataset,
            start=config.dataset.count,
            count=max(r["index"] for r in extra) + 1 - config.dataset.count,
        )
        plan_records += [e.to_record() for e in extra_entries]
    write_jsonl(run_dir / PLAN_NAME, plan_records)

    result = generate_images(config, run_dir, entries, manifest)
    if result.generated:
        info(
            f"generated {len(result.generated)} image(s) in {result.seconds:.1f} s "
            f"({result.images_per_second:.2f} img/s); {len(result.skipped)} already done"
        )
    else:
        info(f"all {len(result.skipped)} planned image(s) already generated and verified")
    training_set = write_training_set(config, run_dir)
    info(
        f"captions: {len(training_set.image_ids)} image(s) in {training_set.folder}, "
        f"{training_set.dataset_toml.name}, {training_set.sample_prompts.name}"
    )
    return DatasetResult(
        run_dir=run_dir, planned=len(entries), generation=result, training_set=training_set, anchor=anchor
    )
