"""diffusers training backend speed: s/step on the tiny FLUX model with and without the encoding cache.

    python benchmarks/bench_train.py [--images 8] [--resolution 64] [--epochs 2]

With the cache (the default), images and captions are encoded once (VAE, CLIP, T5) and every step runs only
the transformer; without it, each step encodes its batch again. On the tiny model the encoders cost about as
much as the transformer; on FLUX.1-dev T5-XXL and the VAE at 1024 px add far more, and keeping them loaded
costs ~10 GB of memory. The s/step figures are the one the progress bar and the report quote: the median of
each step's own duration (`step_seconds` in train/metrics.jsonl), the first step excluded
(zirelia_local/training/step_time.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ZIRELIA_NO_PROGRESS", "1")

from figures import print_figure

from zirelia_local.cli import configure_logging
from zirelia_local.common.config import load_config
from zirelia_local.common.files import read_jsonl
from zirelia_local.training.step_time import median_from_metrics

REPO = Path(__file__).resolve().parent.parent


def report(metric: str, value: float, params: str) -> None:
    print_figure("train", metric, value, params)


def run(config) -> tuple[float, float]:
    """Train once from scratch (LoRA files and state removed, cache kept); (median step_seconds, wall seconds)."""
    from zirelia_local.training.diffusers_backend import train_diffusers

    train = config.run_dir / "train"
    if train.is_dir():
        for path in train.iterdir():
            if path.name != "cache":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    started = time.perf_counter()
    train_diffusers(config)
    wall = time.perf_counter() - started
    median = median_from_metrics(read_jsonl(train / "metrics.jsonl"))
    assert median is not None, "the trainer recorded no step_seconds"
    return median, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is fastest for "
        "the tiny model on a busy machine, where extra threads only wait for each other",
    )
    args = parser.parse_args()
    configure_logging()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from zirelia_local.common.console import console
    from zirelia_local.dataset import run_dataset

    console.quiet = True  # the trainer's own lines would drown the figures
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(REPO / "configs" / "demo.toml", run_dir=Path(tmp) / "run")
        config.dataset.count = args.images
        config.dataset.fixed_seed_images = min(config.dataset.fixed_seed_images, args.images)
        config.dataset.resolution = args.resolution
        config.train.epochs = args.epochs
        run_dataset(config)
        params = (
            f"tiny FLUX, {args.images} images, {args.resolution}px, batch 1, CPU {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads"
        )
        print(f"diffusers backend, {params}, {args.epochs} epochs")

        _, cold_wall = run(config)
        warm_step, warm_wall = run(config)
        config.train.cache_latents = False
        config.train.cache_text_encoder_outputs = False
        off_step, off_wall = run(config)

    report("median s/step (step_seconds), latent + text-encoder cache on", warm_step, params)
    report("median s/step (step_seconds), cache off (encode every step)", off_step, params)
    report("speed-up of the cache (x)", off_step / warm_step, params)
    report("run wall s, cache on, first run (encodes)", cold_wall, params)
    report("run wall s, cache on, reused (no encoder loaded)", warm_wall, params)
    report("run wall s, cache off", off_wall, params)


if __name__ == "__main__":
    main()
