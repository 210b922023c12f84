"""(b) The diffusers backend: s/step and peak memory at 512 and 1024 px, LoRA rank 32, per VRAM preset.

The backend honours a preset through one switch: fp8 base weights for 12gb, 16gb and 24gb, bf16 for 40gb
and 80gb (batch 1 and AdamW either way; `plan_training`). So two presets stand for all five: 24gb (fp8) and
80gb (bf16). Each case writes random-noise training images into a run's manifest and calls the project's
`run_training` (the diffusers backend: encode and cache, load the transformer, add the LoRA, train, save),
then reads the per-step times the backend records in `train/metrics.jsonl`; the first step (warm-up) is left
out of the median. The peak covers the whole run: the encoding phase (VAE, T5-XXL, CLIP-L) and training.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from gpuproof.cases import Case
from gpuproof.setup import proof_config, write_training_images

#: preset -> what the diffusers backend does with it
PRESETS = {"24gb": "fp8 base (12gb, 16gb, 24gb)", "80gb": "bf16 base (40gb, 80gb)"}


def plan(options: Any) -> list[Case]:
    presets = list(PRESETS) if options.full else [options.auto_preset()]
    cases = []
    for preset in presets:
        for resolution in (1024, 512):  # 1024 first: the size the sienna projection needs
            params = {
                **options.case_params(),
                "vram": preset,
                "resolution": options.resolution(resolution),
                "images": 8 if options.full else 4,
                "rank": 32,
            }
            what = "CPU: no fp8" if options.tiny else PRESETS.get(preset, "auto")
            name = f"{preset} ({what}), {resolution} px"
            cases.append(Case("training", name, params))
    return cases


def measure(params: dict[str, Any]) -> dict[str, Any]:
    from zirelia_local.common.files import read_jsonl
    from zirelia_local.training import run_training
    from zirelia_local.training.outputs import train_dir

    resolution, images = params["resolution"], params["images"]
    config = proof_config(
        Path(params["workdir"]) / f"run-train-{params['vram']}-{resolution}",
        model=params["model"],
        device=params["device"],
        resolution=resolution,
        count=images,
        generator={"dtype": params["dtype"]},
        train={
            "backend": "diffusers",
            "vram": params["vram"],
            "network_dim": params["rank"],
            "network_alpha": 16,
            "epochs": 1,
            "save_every_n_epochs": 1,
            "resolution": resolution,
        },
    )
    write_training_images(config, images, resolution)
    started = time.perf_counter()
    from zirelia_local.training.step_time import STEP_SECONDS

    run_training(config)
    wall = time.perf_counter() - started
    out = train_dir(config)
    # Each step's own duration, as the trainer records it (training/step_time.py).
    steps = [
        record[STEP_SECONDS] for record in read_jsonl(out / "metrics.jsonl") if record.get(STEP_SECONDS) is not None
    ]
    if len(steps) < 2:
        raise RuntimeError(f"the backend recorded {len(steps)} step time(s) in {out / 'metrics.jsonl'}")
    lora = out / f"{config.lora_name}.safetensors"
    return {
        "s_per_step": round(statistics.median(steps[1:]), 3),
        "first_step_s": round(steps[0], 3),
        "steps_timed": len(steps) - 1,
        "batch": 1,
        "wall_s": round(wall, 1),
        "setup_s": round(wall - sum(steps), 1),
        "lora_mib": round(lora.stat().st_size / 1024**2, 1) if lora.is_file() else None,
    }
