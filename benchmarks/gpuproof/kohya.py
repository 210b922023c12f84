"""(c) sd-scripts' `flux_train_network.py` through the project's own kohya launcher, per VRAM preset.

Only when `ZIRELIA_SD_SCRIPTS` names an sd-scripts checkout with its venv (`venv/bin/python`). Each case
writes random-noise training images, then calls `run_training` with backend "kohya": the project builds the
command from the preset (fp8 base, blocks to swap, optimizer, batch, resolution), launches sd-scripts and
follows its progress bar into `train/metrics.jsonl`. sd-scripts reads the same random weights: the diffusers
transformer shards, T5-XXL and CLIP-L files of the model folder and a BFL-layout copy of the VAE, with the
locally built tokenizers re-saved by sd-scripts' own transformers into `--tokenizer_cache_dir`.
s/step is tqdm's rate at the last step; the peak is the device's used memory while sd-scripts ran, less what
this process held before it started (sd-scripts is another process: torch's own peak counters cannot see it).
With `--tiny` sd-scripts is never launched (its loaders fix T5-XXL, CLIP-L and the VAE at full size): the
command of every preset is built by the launcher's dry run instead, which proves the files and flags.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from gpuproof.cases import Case
from gpuproof.setup import proof_config, write_training_images

RESAVE_TOKENIZERS = """
import sys
from pathlib import Path
from transformers import CLIPTokenizer, T5TokenizerFast
source, out = Path(sys.argv[1]), Path(sys.argv[2])
CLIPTokenizer(vocab_file=str(source / "tokenizer" / "vocab.json"), merges_file=str(source / "tokenizer" / "merges.txt"),
              model_max_length=77).save_pretrained(out / "openai_clip-vit-large-patch14")
T5TokenizerFast(tokenizer_file=str(source / "tokenizer_2" / "tokenizer.json"), eos_token="</s>", pad_token="<pad>",
                unk_token="<unk>", extra_ids=0, model_max_length=512).save_pretrained(out / "google_t5-v1_1-xxl")
"""


def sd_scripts_checkout() -> tuple[Path | None, str | None]:
    """(checkout, None) when ZIRELIA_SD_SCRIPTS is usable, else (None, why not)."""
    value = os.environ.get("ZIRELIA_SD_SCRIPTS")
    if not value:
        return None, "ZIRELIA_SD_SCRIPTS is not set (it names an sd-scripts checkout with its venv)"
    folder = Path(value).expanduser()
    if not (folder / "flux_train_network.py").is_file():
        return None, f"ZIRELIA_SD_SCRIPTS={folder} has no flux_train_network.py"
    if not (folder / "venv" / "bin" / "python").is_file():
        return None, f"{folder}/venv/bin/python does not exist (sd-scripts needs its own venv)"
    return folder, None


def plan(options: Any) -> list[Case]:
    from zirelia_local.training.presets import PRESET_NAMES

    files = options.kohya_files
    if options.tiny:
        params = {**options.case_params(), "files": files, "presets": list(PRESET_NAMES), "dry_run": True}
        return [Case("kohya", "every preset, dry run (command built, not launched)", params)]
    checkout, why = sd_scripts_checkout()
    problem = why or files.get("problem")
    presets = list(PRESET_NAMES) if options.full else [options.auto_preset()]
    cases = []
    for preset in presets:
        params = {
            **options.case_params(),
            "files": files,
            "presets": [preset],
            "dry_run": False,
            "sd_scripts": str(checkout) if checkout else None,
            "images": 4,
        }
        cases.append(Case("kohya", preset, params, skip_reason=problem))
    return cases


def _config(params: dict[str, Any], preset: str, run_dir: Path, images: int, tokenizers: Path | None) -> Any:
    from zirelia_local.training.presets import get_preset

    files = params["files"]
    batch = get_preset("flux", preset).batch_size
    train = {
        "backend": "kohya",
        "vram": preset,
        "network_dim": 32,
        "network_alpha": 16,
        "epochs": 1,
        "num_repeats": batch,  # images x batch / batch = the same number of steps for every preset
        "pretrained_model": files.get("pretrained_model", "missing-transformer.safetensors"),
        "clip_l": files["clip_l"],
        "t5xxl": files["t5xxl"],
        "ae": files["ae"],
        "mixed_precision": "bf16" if params["cuda"] else "no",
    }
    if params.get("sd_scripts"):
        train["sd_scripts"] = params["sd_scripts"]
    if tokenizers is not None:
        train["tokenizer_cache_dir"] = str(tokenizers)
    return proof_config(
        run_dir, model=params["model"], device=params["device"], resolution=1024, count=images, train=train
    )


def measure(params: dict[str, Any]) -> dict[str, Any]:
    from zirelia_local.training import run_training
    from zirelia_local.training.presets import get_preset

    workdir = Path(params["workdir"])
    if params["dry_run"]:
        built = []
        for preset in params["presets"]:
            config = _config(params, preset, workdir / f"run-kohya-dry-{preset}", 2, None)
            write_training_images(config, 2, 64)
            result = run_training(config, dry_run=True)
            assert result.dry_run
            built.append(preset)
        return {"dry_run": True, "presets": built}

    preset = params["presets"][0]
    sd_scripts = Path(params["sd_scripts"])
    tokenizers = workdir / "kohya" / "tokenizers"
    if not (tokenizers / "google_t5-v1_1-xxl").is_dir():
        subprocess.run(
            [str(sd_scripts / "venv" / "bin" / "python"), "-c", RESAVE_TOKENIZERS, params["model"], str(tokenizers)],
            cwd=sd_scripts,
            check=True,
            timeout=300,
        )
    config = _config(params, preset, workdir / f"run-kohya-{preset}", params["images"], tokenizers)
    write_training_images(config, params["images"], 1024)
    started = time.perf_counter()
    run_training(config)
    wall = time.perf_counter() - started
    return {**_steps(config), "wall_s": round(wall, 1), "batch": get_preset("flux", preset).batch_size}


def _steps(config: Any) -> dict[str, Any]:
    from zirelia_local.common.files import read_jsonl
    from zirelia_local.training.outputs import train_dir
    from zirelia_local.training.step_time import STEP_SECONDS, median_from_metrics

    records = [r for r in read_jsonl(train_dir(config) / "metrics.jsonl") if r.get(STEP_SECONDS) is not None]
    median = median_from_metrics(records)
    if median is None:
        raise RuntimeError("sd-scripts reported no step (no progress line with a step count)")
    # The median of each step's own duration, as the progress bar and the report quote it.
    return {"s_per_step": round(median, 3), "steps": records[-1].get("step")}
