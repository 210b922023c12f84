"""`zirelia generate` speed: images/s on the tiny FLUX model with a LoRA, with and without the critic.

    python benchmarks/bench_generate.py [--images 16] [--rounds 3]

"Without the critic" draws the images with the LoRA loaded (the renderer alone); "with the critic" is the whole
command's work per image: draw, judge (dlib face detection and identity, sharpness, exposure; no CLIP weights,
as in the demo), write the attempt record (and the PNG of an accepted image). "Critic alone" judges the drawn
images by themselves. All exclude model loading, and retries are off (the tiny random model draws no face, so
every image would be retried), so each image is one attempt. The tiny model's images hold no face, so the critic
only detects (nothing to embed): its cost on real portraits, with a face to embed, is bench_critic.py's. Each
figure is the best of `--rounds`, the ways interleaved, because a shared machine's load changes minute to
minute. Prints one `BENCH {json}` line per figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("ZIRELIA_NO_PROGRESS", "1")

from figures import print_figure  # noqa: E402  (benchmarks/ is on sys.path: scripts run by path)

from zirelia_local.cli import configure_logging  # noqa: E402
from zirelia_local.common.config import load_config  # noqa: E402


def write_lora(pipe, path: Path) -> Path:
    """A real LoRA file for the tiny transformer (a peft adapter with random weights, as diffusers saves one)."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = pipe.transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    FluxPipeline.save_lora_weights(
        path.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=path.name
    )
    transformer.delete_adapters("default")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images per figure")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (the best is kept)")
    args = parser.parse_args()

    import torch

    from zirelia_local.critic import Critic, clip_text
    from zirelia_local.critic.renderers import FluxLoraRenderer
    from zirelia_local.dataset.flux import load_flux_pipeline
    from zirelia_local.generate import run_generate, with_overrides

    configure_logging()
    config = load_config(REPO / "configs" / "demo.toml")
    pipe = load_flux_pipeline(config.generator)
    size, steps, batch = config.dataset.resolution, config.generator.steps, config.generator.batch_size
    params = f"tiny FLUX + LoRA, {size}px, {steps} steps, batch {batch}, {args.images} images, CPU"
    print(f"generate on the tiny model ({torch.get_num_threads()} torch threads): {params}")
    prompts = [f"reading in a cafe, variation {n}" for n in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        lora = write_lora(pipe, run_dir / "best.safetensors")
        config = with_overrides(config, max_retries=0)
        config.run.dir = run_dir
        critic = Critic.from_config(config, identity_required=False)
        texts = [clip_text(config, prompt) for prompt in prompts]
        run_generate(config, prompts[:batch], out=Path(tmp) / "warm-up", renderer=FluxLoraRenderer(config, pipe))
        # Best of `--rounds`, the two ways interleaved: the machine's load changes from one minute to the next.
        alone = judge = judged = 0.0
        for round_number in range(args.rounds):
            renderer = FluxLoraRenderer(config, pipe)
            renderer.load_lora(lora, 0)
            started = time.perf_counter()
            images = []
            for offset in range(0, len(prompts), batch):
                images += renderer.render(prompts[offset : offset + batch], list(range(offset, offset + batch)), 1.0)
            alone = max(alone, len(images) / (time.perf_counter() - started))
            renderer.unload_lora()
            started = time.perf_counter()
            for offset in range(0, len(images), batch):
                critic.judge_batch(images[offset : offset + batch], texts[offset : offset + batch])
            judge = max(judge, len(images) / (time.perf_counter() - started))
            out = Path(tmp) / f"out{round_number}"
            result = run_generate(config, prompts, out=out, renderer=FluxLoraRenderer(config, pipe))
            assert result.drawn == len(prompts), result.drawn
            judged = max(judged, result.drawn / result.seconds)
        print_figure("generate", "images/s without the critic (draw only)", alone, params)
        print_figure("generate", "images/s with the critic (draw, judge, write)", judged, params)
        print_figure("generate", "critic alone (judge only), images/s", judge, params)
        # From the two isolated rates (measured back to back), not from the end-to-end one: on a loaded machine a
        # difference of two separate timings is mostly noise.
        share = (1 / judge) / (1 / alone + 1 / judge)
        print_figure("generate", "critic's share of draw + judge time, %", 100 * share, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
