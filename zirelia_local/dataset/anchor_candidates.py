"""The drawn anchor: without `[dataset] anchor_image`, the FLUX generator draws `anchor_candidates` front-facing
portraits from the persona's description (the base seed first, then derived seeds) and the best one becomes
the anchor: one clear face (curation's face checks), then no blur or exposure fault (the critic's measures),
then the largest face, then the sharpest. Each candidate is written as soon as its batch is drawn, with its
prompt and seed in the PNG, so a killed run redraws none of the finished ones.

The generator is dropped as soon as the candidates are drawn: in an anchored run nothing else in the dataset
and curation stages draws with it (FLUX.1 Kontext draws every planned image), so its memory is freed before
Kontext is loaded, whatever the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar, warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes, png_bytes, remove_stale_temp_files
from zirelia_local.common.images import ImageRefused, load_rgb, open_image, png_text, read_header
from zirelia_local.dataset.anchor import (
    ANCHOR_DIR,
    Anchor,
    PortraitCheck,
    check_portrait,
    portrait_warnings,
    save_anchor,
)
from zirelia_local.dataset.plan import mix32
from zirelia_local.faces import FaceEmbedder


def candidate_seeds(base_seed: int, count: int) -> list[int]:
    """The base seed, then distinct seeds derived from it."""
    seeds = [base_seed]
    step = 1
    while len(seeds) < count:
        seed = mix32((base_seed ^ 0xA5C3) + step * 0x9E3779B9)
        if seed not in seeds:
            seeds.append(seed)
        step += 1
    return seeds


def candidate_file(index: int) -> str:
    return f"{ANCHOR_DIR}/candidate_{index:02d}.png"


def anchor_prompt(config: ZireliaConfig) -> str:
    return config.dataset.anchor_prompt.format(description=config.persona.description)


def drawn_key(config: ZireliaConfig) -> dict[str, Any]:
    """What a drawn anchor depends on: a change to any of these draws new candidates and a new anchor."""
    gen = config.generator
    return {
        "source": "generated",
        "model": gen.model,
        "revision": gen.revision,
        "prompt": anchor_prompt(config),
        "seeds": candidate_seeds(config.dataset.seed, config.dataset.anchor_candidates),
        "steps": gen.steps,
        "guidance": gen.guidance,
        "max_sequence_length": gen.max_sequence_length,
        "resolution": config.dataset.resolution,
    }


def _finished(path: Path, prompt: str, seed: int, model: str, size: int) -> bool:
    """A candidate drawn earlier with the same prompt, seed and model (read from its PNG), and readable."""
    try:
        text = png_text(path)
        return (
            read_header(path).size == (size, size)
            and text.get("prompt") == prompt
            and text.get("seed") == str(seed)
            and text.get("model") == model
        )
    except ImageRefused:  # missing, half-written or damaged: draw it again
        return False


def _rank(check: PortraitCheck, config: ZireliaConfig) -> tuple[bool, int, int, float]:
    return (
        check.ok,
        -len(portrait_warnings(config, check)),
        check.face.size if check.face is not None and check.ok else 0,
        check.sharpness,
    )


def draw_anchor(config: ZireliaConfig, run_dir: Path, embedder: FaceEmbedder, pipe: Any = None) -> Anchor:
    """Draw the missing candidates, check them all, keep the best as the anchor (see the module doc)."""
    from zirelia_local.dataset.flux import load_generator_pipeline, release_pipeline_memory
    from zirelia_local.dataset.generation import render_batch

    run_dir = Path(run_dir)
    remove_stale_temp_files(run_dir / ANCHOR_DIR)
    prompt = anchor_prompt(config)
    seeds = candidate_seeds(config.dataset.seed, config.dataset.anchor_candidates)
    model, size = config.generator.model, config.dataset.resolution
    paths = [run_dir / candidate_file(index) for index in range(len(seeds))]
    missing = [
        i
        for i, (path, seed) in enumerate(zip(paths, seeds, strict=True))
        if not _finished(path, prompt, seed, model, size)
    ]
    if missing:
        if pipe is None:
            pipe = load_generator_pipeline(config, "to draw the anchor portrait")
        batch_size = config.generator.batch_size
        with progress_bar("anchor portraits", total=len(missing), unit="img") as advance:
            for offset in range(0, len(missing), batch_size):
                chunk = missing[offset : offset + batch_size]
                images = render_batch(pipe, [prompt] * len(chunk), [seeds[i] for i in chunk], config)
                for index, image in zip(chunk, images, strict=True):
                    metadata = {"prompt": prompt, "seed": str(seeds[index]), "model": model}
                    atomic_write_bytes(paths[index], png_bytes(image, metadata))
                advance(len(chunk))
        # Kontext draws everything from here on: free the generator's memory before it is loaded.
        del pipe
        release_pipeline_memory()

    arrays = [load_rgb(path) for path in paths]
    checks = [
        check_portrait(config, rgb, faces) for rgb, faces in zip(arrays, embedder.detect_batch(arrays), strict=True)
    ]
    chosen = max(range(len(checks)), key=lambda index: _rank(checks[index], config))
    best = checks[chosen]
    if not best.ok:
        counts = ", ".join(
            f"{candidate_file(i)}: {check.to_record()['verdict_text']}" for i, check in enumerate(checks)
        )
        message = f"none of the {len(checks)} anchor portrait(s) drawn by {model} shows one clear face ({counts})"
        if config.curate.mode == "enforce":
            raise ZireliaError(
                message,
                hint="raise [dataset] anchor_candidates, reword [dataset] anchor_prompt, or give a photo of the "
                "persona as [dataset] anchor_image",
            )
        warn(
            escape(
                f"{message}. A random test model such as builtin:tiny-flux draws no face at all; "
                f'[curate] mode = "record" goes on with the best-exposed portrait, {candidate_file(chosen)}'
            )
        )
    record = {
        "key": drawn_key(config),
        "source": "generated",
        "model": model,
        "prompt": prompt,
        "seed": seeds[chosen],
        "chosen": candidate_file(chosen),
        "resolution": size,
        "embedder": embedder.name,
        "check": best.to_record(),
        "candidates": [
            {"file": candidate_file(i), "seed": seed, "chosen": i == chosen, **checks[i].to_record()}
            for i, seed in enumerate(seeds)
        ],
    }
    anchor = save_anchor(run_dir, open_image(paths[chosen]), record)
    face = f"{best.face.size} px face" if best.ok and best.face is not None else "no clear face"
    info(
        f"anchor: {candidate_file(chosen)} of {len(seeds)} portrait(s) (seed {seeds[chosen]}, {face}) -> {anchor.path}"
    )
    return anchor
