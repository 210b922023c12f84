"""Dataset stage speed: images/s of the tiny FLUX pipeline per batch size, and plan + caption time at scale.

    python benchmarks/bench_dataset.py

The tiny pipeline's speed says nothing about FLUX.1-dev's; it measures our overhead around the pipeline
(batching, PNG encoding, atomic writes, manifest saves). Plan/caption time for 10,000 images shows the
bookkeeping stays negligible next to generation.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ZIRELIA_NO_PROGRESS", "1")

from figures import print_figure

from zirelia_local.cli import configure_logging
from zirelia_local.common.config import load_config
from zirelia_local.common.files import write_jsonl
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset.captions import write_training_set
from zirelia_local.dataset.generation import generate_images
from zirelia_local.dataset.plan import plan_images

REPO = Path(__file__).resolve().parent.parent


def report(metric: str, value: float, params: str) -> None:
    print_figure("dataset", metric, value, params)


def main() -> None:
    import torch

    configure_logging()
    torch.set_num_threads(os.cpu_count() or 1)
    from zirelia_local.dataset.flux import load_flux_pipeline

    config = load_config(REPO / "configs" / "demo.toml")
    pipe = load_flux_pipeline(config.generator)
    images = 16
    print(f"tiny FLUX pipeline, {config.dataset.resolution}px, {config.generator.steps} steps, {images} images, CPU")
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in (1, 2, 4):
            config.generator.batch_size = batch_size
            run_dir = Path(tmp) / f"b{batch_size}"
            entries = plan_images(config.persona, config.dataset, count=images)
            generate_images(config, run_dir, entries[:batch_size], Manifest(run_dir), pipe=pipe)  # warm-up
            started = time.perf_counter()
            result = generate_images(config, run_dir, entries, Manifest(run_dir), pipe=pipe)
            seconds = time.perf_counter() - started
            report(
                "images/s (tiny model, end to end)",
                len(result.generated) / seconds,
                f"batch {batch_size}, {config.dataset.resolution}px, {config.generator.steps} steps",
            )

        big = config.model_copy(deep=True)
        big.dataset.count = 10_000
        started = time.perf_counter()
        entries = plan_images(big.persona, big.dataset)
        plan_seconds = time.perf_counter() - started
        report("plan time, s", plan_seconds, "10,000 images")

        run_dir = Path(tmp) / "captions"
        big.run.dir = run_dir
        (run_dir / "images").mkdir(parents=True)
        source = next((Path(tmp) / "b1" / "images").glob("*.png"))
        records = []
        for entry in entries:
            os.link(source, run_dir / "images" / f"{entry.id}.png")
            records.append(
                {
                    "id": entry.id,
                    "index": entry.index,
                    "file": f"images/{entry.id}.png",
                    "caption": entry.caption,
                    "status": "generated",
                    "sha256": "-",
                }
            )
        write_jsonl(run_dir / "manifest.jsonl", records)
        started = time.perf_counter()
        write_training_set(big, run_dir)
        report("caption + dataset.toml time, s", time.perf_counter() - started, "10,000 images, first write")
        started = time.perf_counter()
        write_training_set(big, run_dir)
        report("caption + dataset.toml time, s", time.perf_counter() - started, "10,000 images, unchanged rerun")


if __name__ == "__main__":
    main()
