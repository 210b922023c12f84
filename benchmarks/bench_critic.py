"""Critic throughput on CPU: images judged per second, identity alone and identity + CLIP.

    python benchmarks/bench_critic.py [--images 8] [--sizes 512 1024]

Judges real face photos (tests/data, padded to square evaluation sizes) with the dlib embedder against a
reference identity, in batches of 4 as `zirelia critic` does. CLIP speed does not depend on the weights'
values, so the real-size ViT-B-32 architecture runs with random weights (no download); the tiny test CLIP is
timed too, to show what the test suite pays. Prints one `BENCH {json}` line per figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from figures import print_figure  # noqa: E402  (benchmarks/ is on sys.path: scripts run by path)

from zirelia_local.common.config import CriticConfig  # noqa: E402
from zirelia_local.critic.clip_score import ClipAvailability, ClipScorer  # noqa: E402
from zirelia_local.critic.judge import Critic  # noqa: E402
from zirelia_local.faces.identity import ReferenceIdentity  # noqa: E402

PHOTOS = REPO / "tests" / "data"
BATCH = 4
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def bench(name: str, metric: str, value: float, params: str) -> None:
    print_figure("critic", metric, value, f"{name}; {params}")


def square(image: Image.Image, size: int) -> Image.Image:
    """The photo centred on a grey square and scaled to `size` (a face of ~35% of the side, as in a portrait)."""
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.resize((size, size), Image.BILINEAR)


def random_clip(model_name: str | None) -> ClipScorer:
    import logging

    import open_clip

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that the weights are random: they are, here
    if model_name is None:
        import open_clip.factory

        open_clip.factory._MODEL_CONFIGS["zirelia-bench-tiny"] = TINY_CLIP_CFG
        model_name = "zirelia-bench-tiny"
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    return ClipScorer(model, preprocess, open_clip.get_tokenizer(model_name), name=f"{model_name} (random weights)")


def images_per_second(critic: Critic, images: list[Image.Image], texts: list[str]) -> float:
    critic.judge_batch(images[:BATCH], texts[:BATCH])  # warm-up (first calls allocate)
    started = time.perf_counter()
    judged = 0
    for offset in range(0, len(images), BATCH):
        verdicts = critic.judge_batch(images[offset : offset + BATCH], texts[offset : offset + BATCH])
        judged += len(verdicts)
    return judged / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images judged per figure")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="evaluation image sizes")
    args = parser.parse_args()

    import torch

    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    embedder = DlibEmbedder()
    photos = {
        name: Image.open(PHOTOS / f"{name}.jpg").convert("RGB") for name in ("obama", "obama2", "obama3", "biden")
    }
    reference_vectors = [embedder.detect(photos[name])[0].embedding for name in ("obama2", "obama3")]
    reference = ReferenceIdentity(embedder.centroid(reference_vectors), embedder.name, "reference_images", 2)
    texts = ["a photo of a man, wearing a suit, in an office"] * args.images
    print(f"critic throughput on CPU ({torch.get_num_threads()} torch threads), batches of {BATCH}, dlib embedder")

    no_clip = ClipAvailability(None, "benchmark: identity alone")
    for size in args.sizes:
        cycle = [photos[name] for name in ("obama", "biden", "obama2", "obama3")]
        images = [square(cycle[i % len(cycle)], size) for i in range(args.images)]
        critic = Critic(CriticConfig(), embedder, reference, no_clip)
        faces = sum(1 for verdict in critic.judge_batch(images, texts) if verdict.scores["faces"])
        assert faces == len(images), f"dlib found faces in only {faces} of {len(images)} images at {size} px"
        rate = images_per_second(critic, images, texts)
        bench("identity", "identity + defects, images/s", rate, f"{size}x{size}, {args.images} images")

    size = min(args.sizes)
    images = [square(photos[("obama", "biden")[i % 2]], size) for i in range(args.images)]
    for label, model_name in (("tiny test CLIP", None), ("ViT-B-32", "ViT-B-32")):
        scorer = random_clip(model_name)
        critic = Critic(CriticConfig(min_clip_score=-1.0), embedder, reference, ClipAvailability(scorer, None, label))
        rate = images_per_second(critic, images, texts)
        bench("identity+clip", f"identity + {label} + defects, images/s", rate, f"{size}x{size}, {args.images} images")
        started = time.perf_counter()
        for offset in range(0, len(images), BATCH):
            scorer.score(images[offset : offset + BATCH], texts[offset : offset + BATCH])
        clip_rate = len(images) / (time.perf_counter() - started)
        bench("clip", f"{label} alone, images/s", clip_rate, f"{size}x{size}, {args.images} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
