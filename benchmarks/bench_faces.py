"""Faces per second of the dlib embedder on CPU: one image per call vs batched calls.

Runs on the public-domain test photos in tests/data (four photos, plus mirrored copies, repeated to 24
images of ~390 px, one face each). The batched path detects per image, then embeds all faces of the batch
in one ResNet call. Run: python benchmarks/bench_faces.py [--images 24] [--batch 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from figures import print_figure  # noqa: E402  (benchmarks/ is on sys.path: scripts run by path)


def bench(label: str, run, repeats: int) -> tuple[float, int]:
    best, faces = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        faces = run()
        best = min(best, time.perf_counter() - started)
    return best, faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image, ImageOps

    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    photos = [Image.open(path).convert("RGB") for path in sorted((REPO / "tests" / "data").glob("*.jpg"))]
    variants = photos + [ImageOps.mirror(photo) for photo in photos]
    images = [np.asarray(variants[i % len(variants)]) for i in range(args.images)]
    started = time.perf_counter()
    embedder = DlibEmbedder()
    load_s = time.perf_counter() - started
    embedder.detect(images[0])  # warm-up

    def one_at_a_time() -> int:
        return sum(len(embedder.detect(image)) for image in images)

    def batched() -> int:
        return sum(
            len(faces)
            for offset in range(0, len(images), args.batch)
            for faces in embedder.detect_batch(images[offset : offset + args.batch])
        )

    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    print(f"dlib embedder on CPU: {args.images} images (~{size}, one face each), best of {args.repeats}")
    print(f"  model load: {load_s:.2f} s")
    results = {}
    for name, run in (("one image per call", one_at_a_time), (f"batches of {args.batch}", batched)):
        seconds, faces = bench(name, run, args.repeats)
        results[name] = faces / seconds
        print(f"  {name:>20}: {faces} faces in {seconds:.2f} s = {faces / seconds:.1f} faces/s")
    single, batch = results.values()
    print(f"  batched / single: {batch / single:.2f}x")
    params = f"{args.images} images ~{size}, best of {args.repeats}"
    for metric, value in (
        ("faces/s, dlib CPU, one image per call", single),
        (f"faces/s, dlib CPU, detect_batch of {args.batch}", batch),
        ("model load, s", load_s),
    ):
        print_figure("faces", metric, value, params)


if __name__ == "__main__":
    main()
