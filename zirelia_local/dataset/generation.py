"""Generation: turn planned images into PNG files with a FluxPipeline, resumably.

Each image is reproducible from its seed alone: a batch passes one `torch.Generator` per image, so an
image comes out the same whether it was drawn alone or beside others. After each batch the images are
written atomically and the manifest is saved, so a kill loses at most the batch in flight; a rerun
skips every image whose file exists with the recorded sha256 and regenerates missing or corrupt ones.

With `[dataset] identity = "anchor"` the same loop draws with a FluxKontextPipeline: every image is the
anchor portrait (anchor.png) edited by the plan's instruction. Each manifest row names its method and, for
the anchored one, the anchor's sha256; a row made by another method or from another anchor is redrawn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes, png_bytes, remove_stale_temp_files, sha256_bytes
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset.anchor import Anchor, require_anchor
from zirelia_local.dataset.plan import PlannedImage

if TYPE_CHECKING:
    from diffusers import FluxPipeline

IMAGES_DIR = "images"


@dataclass
class GenerationResult:
    generated: list[str]
    skipped: list[str]
    seconds: float
    #: the pipeline that drew the images (None when nothing was drawn), for a later stage to reuse
    pipe: Any = None

    @property
    def images_per_second(self) -> float:
        return len(self.generated) / self.seconds if self.seconds > 0 and self.generated else 0.0


def image_record(
    entry: PlannedImage, config: ZireliaConfig, round_index: int, anchor: Anchor | None = None
) -> dict[str, Any]:
    """The manifest record of a planned image (before generation); `anchor` for the anchored method."""
    size = config.dataset.resolution
    gen = config.generator
    return {
        "id": entry.id,
        "index": entry.index,
        "round": round_index,
        "file": f"{IMAGES_DIR}/{entry.id}.png",
        "prompt": entry.prompt,
        "caption": entry.caption,
        "seed": entry.seed,
        "fixed_seed": entry.fixed_seed,
        "axes": entry.axes,
        "width": size,
        "height": size,
        "method": "anchor" if anchor is not None else "text",
        "anchor": anchor.manifest_field() if anchor is not None else None,
        "model": gen.kontext_model if anchor is not None else gen.model,
        "steps": gen.steps,
        "guidance": gen.kontext_guidance if anchor is not None else gen.guidance,
        "status": "planned",
        "sha256": None,
    }


def render_batch(
    pipe: FluxPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    config: ZireliaConfig,
    *,
    size: int | None = None,
    anchor: Any = None,
) -> list[Any]:
    """Draw one batch; one generator per image keeps every image reproducible from its own seed.

    `anchor` (a PIL image; `pipe` a FluxKontextPipeline) makes each image from it, the prompts being the
    instructions; its guidance is `[generator] kontext_guidance`.
    """
    import torch

    size = size or config.dataset.resolution
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    extra: dict[str, Any] = {}
    guidance = config.generator.guidance
    if anchor is not None:
        guidance = config.generator.kontext_guidance
        # The anchor is already square at the output size. Kontext would otherwise resize the input to its
        # preferred training resolution (1024 px for a square: the same at the default resolution) and size
        # the output to `max_area` (1024^2 by default) instead of [dataset] resolution.
        extra = {"image": anchor, "max_area": size * size, "_auto_resize": False}
    output = pipe(
        prompt=list(prompts),
        height=size,
        width=size,
        num_inference_steps=config.generator.steps,
        guidance_scale=guidance,
        max_sequence_length=config.generator.max_sequence_length,
        generator=generators,
        **extra,
    )
    return list(output.images)


def _made_as_planned(record: dict[str, Any], anchor: Anchor | None) -> bool:
    """Whether a drawn image came from the current method (and anchor): rows before methods existed are text."""
    if anchor is None:
        return record.get("method", "text") == "text"
    return record.get("method") == "anchor" and (record.get("anchor") or {}).get("sha256") == anchor.sha256


def generate_images(
    config: ZireliaConfig,
    run_dir: Path,
    entries: Sequence[PlannedImage],
    manifest: Manifest,
    *,
    round_index: int = 0,
    pipe: FluxPipeline | None = None,
) -> GenerationResult:
    """Generate every entry not already verified on disk; returns what was generated and skipped."""
    run_dir = Path(run_dir)
    remove_stale_temp_files(run_dir / IMAGES_DIR)
    remove_stale_temp_files(run_dir)
    anchor = require_anchor(run_dir) if config.dataset.identity == "anchor" else None
    pending: list[PlannedImage] = []
    skipped: list[str] = []
    for entry in entries:
        existing = manifest.get(entry.id)
        if manifest.is_verified(entry.id) and existing is not None and _made_as_planned(existing, anchor):
            skipped.append(entry.id)
            continue
        if existing and existing.get("status") == "generated":
            why = "is missing or does not match its sha256"
            if manifest.is_verified(entry.id):
                why = "was made by another method or from another anchor"
            info(f"[yellow]{existing['file']} {why}: regenerating[/yellow]")
        round_of = existing.get("round", round_index) if existing else round_index
        manifest.upsert(image_record(entry, config, round_of, anchor))
        pending.append(entry)
    manifest.save()
    if not pending:
        return GenerationResult(generated=[], skipped=skipped, seconds=0.0)

    if pipe is None:
        from zirelia_local.dataset.flux import load_dataset_pipeline

        pipe = load_dataset_pipeline(config)
    anchor_image = None
    if anchor is not None:
        if type(pipe).__name__ != "FluxKontextPipeline":
            raise ZireliaError(
                f'[dataset] identity = "anchor" draws with a FluxKontextPipeline, not a {type(pipe).__name__}',
                hint="let zirelia load [generator] kontext_model (pass no pipeline)",
            )
        anchor_image = anchor.image()

    generated: list[str] = []
    batch_size = config.generator.batch_size
    started = time.perf_counter()
    with progress_bar("generating", total=len(pending), unit="img") as advance:
        for offset in range(0, len(pending), batch_size):
            batch = pending[offset : offset + batch_size]
            images = render_batch(pipe, [e.prompt for e in batch], [e.seed for e in batch], config, anchor=anchor_image)
            for entry, image in zip(batch, images, strict=True):
                record = manifest.get(entry.id) or image_record(entry, config, round_index, anchor)
                data = png_bytes(image, {"prompt": entry.prompt, "seed": str(entry.seed), "model": record["model"]})
                atomic_write_bytes(run_dir / record["file"], data)
                manifest.upsert(
                    {
                        "id": entry.id,
                        "status": "generated",
                        "sha256": sha256_bytes(data),
                        "width": image.width,
                        "height": image.height,
                    }
                )
                generated.append(entry.id)
            # The manifest is saved after the files it describes: a kill in between only costs a rerender.
            manifest.save()
            advance(len(batch))
    return GenerationResult(generated=generated, skipped=skipped, seconds=time.perf_counter() - started, pipe=pipe)
