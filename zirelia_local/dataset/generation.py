"""Generation: turn planned images into PNG files with a FluxPipeline, resumably.

Each image is reproducible from its seed alone: a batch passes one `torch.Generator` per image, so an
image comes out the same whether it was drawn alone or beside others. After each batch the images are
written atomically and the manifest is saved, so a kill loses at most the batch in flight; a rerun
skips every image whose file exists with the recorded sha256 and regenerates missing or corrupt ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar
from zirelia_local.common.files import atomic_write_bytes, png_bytes, remove_stale_temp_files, sha256_bytes
from zirelia_local.common.manifest import Manifest
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


def image_record(entry: PlannedImage, config: ZireliaConfig, round_index: int) -> dict[str, Any]:
    """The manifest record of a planned image (before generation)."""
    size = config.dataset.resolution
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
        "model": config.generator.model,
        "steps": config.generator.steps,
        "guidance": config.generator.guidance,
        "status": "planned",
        "sha256": None,
    }


def render_batch(
    pipe: FluxPipeline, prompts: Sequence[str], seeds: Sequence[int], config: ZireliaConfig, *, size: int | None = None
) -> list[Any]:
    """Draw one batch; one generator per image keeps every image reproducible from its own seed."""
    import torch

    size = size or config.dataset.resolution
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    output = pipe(
        prompt=list(prompts),
        height=size,
        width=size,
        num_inference_steps=config.generator.steps,
        guidance_scale=config.generator.guidance,
        max_sequence_length=config.generator.max_sequence_length,
        generator=generators,
    )
    return list(output.images)


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
    pending: list[PlannedImage] = []
    skipped: list[str] = []
    for entry in entries:
        if manifest.is_verified(entry.id):
            skipped.append(entry.id)
            continue
        existing = manifest.get(entry.id)
        if existing and existing.get("status") == "generated":
            info(f"[yellow]{existing['file']} is missing or does not match its sha256: regenerating[/yellow]")
        manifest.upsert(image_record(entry, config, existing.get("round", round_index) if existing else round_index))
        pending.append(entry)
    manifest.save()
    if not pending:
        return GenerationResult(generated=[], skipped=skipped, seconds=0.0)

    if pipe is None:
        from zirelia_local.dataset.flux import load_generator_pipeline

        pipe = load_generator_pipeline(config)

    generated: list[str] = []
    batch_size = config.generator.batch_size
    started = time.perf_counter()
    with progress_bar("generating", total=len(pending), unit="img") as advance:
        for offset in range(0, len(pending), batch_size):
            batch = pending[offset : offset + batch_size]
            images = render_batch(pipe, [e.prompt for e in batch], [e.seed for e in batch], config)
            for entry, image in zip(batch, images, strict=True):
                record = manifest.get(entry.id) or image_record(entry, config, round_index)
                data = png_bytes(
                    image, {"prompt": entry.prompt, "seed": str(entry.seed), "model": config.generator.model}
                )
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
