"""After the run, generate: new images of the persona with the trained LoRA, each passed by the
critic (`zirelia generate CONFIG`).

    from zirelia_local.common.config import load_config
    from zirelia_local.generate import generate_persona_images

    for image in generate_persona_images(load_config("configs/sienna.toml"), ["reading in a cafe"], count=2):
        print(image.path, image.seed, image.record["scores"]["identity_similarity"])
"""

from zirelia_local.generate.api import generate_persona_images, with_overrides
from zirelia_local.generate.prompts import PromptSpec, read_prompts_file
from zirelia_local.generate.results import GeneratedImage, GenerateResult
from zirelia_local.generate.stage import run_generate

__all__ = [
    "GenerateResult",
    "GeneratedImage",
    "PromptSpec",
    "generate_persona_images",
    "read_prompts_file",
    "run_generate",
    "with_overrides",
]
