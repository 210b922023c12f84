"""Inputs for the `zirelia generate` tests: a trained-looking run directory (a real reference identity from the
photos in tests/data, a LoRA file as `best.safetensors`), and a renderer test double.

`ScenePhotoRenderer` stands in for FLUX.1-dev with the persona's trained LoRA, which cannot run here (no weights,
no GPU): it returns the real face photos of tests/data, chosen by the prompt, so the real critic (dlib identity,
face, sharpness and exposure checks) and the real retry rules judge real faces.

Run as a script (`python -m tests.generate_support CONFIG [--delay S]`), it generates the standard request of
these tests with that double in its own process, under the run lock, as `zirelia generate` does: the test that
kills a generation with SIGKILL needs a real process to kill.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from PIL import Image

from tests.critic_support import NAME, save_reference_identity, write_placeholder_loras
from tests.photos import photo

#: the standard request: the persona in a cafe (accepted), a stranger (rejected until a retry's stronger trigger
#: phrasing brings the persona back), an impostor (never the persona: rejected after every retry)
PROMPTS = ["reading in a cafe", "talking to a stranger in the street", "an impostor at the door"]
PERSONA_PHOTOS = ("obama", "obama2", "obama3")


class ScenePhotoRenderer:
    """Real photos instead of FLUX images (see the module's docstring): "impostor" scenes always draw another
    person, "stranger" scenes draw another person unless the prompt carries the critic's stronger trigger
    phrasing, anything else draws one of the persona's photos (chosen by seed)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lora: Path | None = None
        #: every LoRA file loaded, in order
        self.loaded: list[Path] = []
        self.calls: list[tuple[list[str], list[int], float]] = []

    @property
    def drawn(self) -> int:
        return sum(len(prompts) for prompts, _, _ in self.calls)

    def load_lora(self, lora: Path, epoch: int) -> None:
        assert Path(lora).is_file()
        self.lora = Path(lora)
        self.loaded.append(self.lora)

    def render(self, prompts: list[str], seeds: list[int], lora_scale: float) -> list[Image.Image]:
        assert self.lora is not None, "load_lora first"
        self.calls.append((list(prompts), list(seeds), lora_scale))
        if self.delay:
            time.sleep(self.delay)  # a batch takes time, so a kill can land in the middle of the request
        images = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            strong = prompt.startswith(f"{NAME}, a photo of {NAME},")
            if "impostor" in prompt or ("stranger" in prompt and not strong):
                images.append(photo("biden"))
            else:
                images.append(photo(PERSONA_PHOTOS[seed % len(PERSONA_PHOTOS)]))
        return images

    def unload_lora(self) -> None:
        self.lora = None


def make_trained_run(run_dir: Path) -> Path:
    """What a finished run leaves for `zirelia generate`: identity.safetensors from real dlib embeddings of the
    persona's photos, and a LoRA file as best.safetensors (the double never loads it; it is hashed)."""
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    run_dir.mkdir(parents=True, exist_ok=True)
    save_reference_identity(run_dir, DlibEmbedder())
    files = write_placeholder_loras(run_dir / "train", NAME, epochs=(1,))
    best = run_dir / "best.safetensors"
    os.link(files[1], best)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="generate the standard test request with ScenePhotoRenderer")
    parser.add_argument("config", type=Path)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each batch takes")
    args = parser.parse_args(argv)

    from zirelia_local.common.config import load_config
    from zirelia_local.common.rundir import run_lock
    from zirelia_local.generate import run_generate

    config = load_config(args.config)
    renderer = ScenePhotoRenderer(delay=args.delay)
    with run_lock(config.run_dir):
        result = run_generate(config, PROMPTS, renderer=renderer)
    print(f"DRAWN {renderer.drawn}", flush=True)
    print(f"OUT {result.out_dir}", flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
