"""What a case needs besides the model: a config the project validates, and a run directory with images.

The configs are real `ZireliaConfig`s (parsed and validated like a user's TOML), so every case goes through
the project's own code: `load_flux_pipeline`, `render_batch`, `run_training`, the critic's renderer.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig, parse_config
from zirelia_local.common.manifest import Manifest

TRIGGER = "gpuproof7"
PROMPT = "a photo of a 23-year-old woman with auburn hair, gentle smile, soft window light, in a cafe"


def proof_config(
    run_dir: Path,
    *,
    model: str,
    device: str,
    resolution: int,
    count: int = 4,
    generator: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    critic: dict[str, Any] | None = None,
) -> ZireliaConfig:
    """A validated config for one case; sections not given keep the project's defaults."""
    data: dict[str, Any] = {
        "persona": {
            "name": "GPU proof",
            "trigger_word": TRIGGER,
            "description": "a 23-year-old woman with shoulder-length wavy auburn hair and green eyes",
            "caption_class": "a 23-year-old woman",
        },
        "dataset": {
            "count": count,
            "resolution": resolution,
            "fixed_seed_images": min(2, count),
            "lighting": ["soft window light"],
            "expressions": ["gentle smile"],
            "settings": ["in a cafe"],
            "outfits": ["a knit sweater"],
        },
        "generator": {"model": model, "device": device, **(generator or {})},
        "curate": {"mode": "record"},
        "train": {"backend": "diffusers", **(train or {})},
        "critic": critic or {},
        "run": {"dir": str(run_dir)},
    }
    return parse_config(data, "<gpu proof>")


def write_training_images(config: ZireliaConfig, count: int, resolution: int, seed: int = 0) -> list[str]:
    """`count` random-noise PNGs with captions in the run's manifest, as the dataset stage records them
    (training speed does not depend on what the pictures show)."""
    import numpy as np
    from PIL import Image

    run_dir = config.run_dir
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    rng = np.random.default_rng(seed)
    ids = []
    for index in range(count):
        image_id = f"img_{index:04d}"
        pixels = rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        data = buffer.getvalue()
        relative = f"images/{image_id}.png"
        (run_dir / relative).write_bytes(data)
        manifest.upsert(
            {
                "id": image_id,
                "index": index,
                "round": 0,
                "file": relative,
                "prompt": PROMPT,
                "caption": f"{TRIGGER}, a photo of a 23-year-old woman, image {index}",
                "seed": seed + index,
                "width": resolution,
                "height": resolution,
                "status": "generated",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        ids.append(image_id)
    manifest.save()
    return ids
