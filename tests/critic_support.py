"""Real inputs for the critic's tests (face photos: tests/photos.py): a reference identity made from real dlib
embeddings, a tiny randomly initialised open_clip model saved as a real model folder, and
real per-epoch FLUX LoRA files (peft adapters on the tiny pipeline, saved by diffusers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tests.photos import photo

#: the trigger word of tests.conftest's config, so also the LoRA name
NAME = "testpersona7"

# A CLIP small enough to build in ~0.1 s; the vocabulary size is open_clip's own tokenizer's (49408), so the
# packaged SimpleTokenizer (BPE vocab shipped inside open_clip) works with it offline.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_reference_identity(run_dir: Path, embedder, names: Sequence[str] = ("obama2", "obama3")) -> Path:
    """identity.safetensors from the real embeddings of photos of one person (what curation writes)."""
    from zirelia_local.faces.identity import ReferenceIdentity, save_identity

    embeddings = [embedder.detect(photo(name))[0].embedding for name in names]
    identity = ReferenceIdentity(
        embedding=embedder.centroid(embeddings), embedder=embedder.name, source="reference_images", count=len(names)
    )
    return save_identity(run_dir, identity)


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised open_clip model saved in open_clip's folder layout (config + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {}}))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    finally:
        torch.random.set_rng_state(state)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def write_epoch_loras(tiny_flux_dir: Path, folder: Path, name: str, epochs: Sequence[int] = (1, 2)) -> dict[int, Path]:
    """Real LoRA files in sd-scripts' naming, one per epoch: a peft adapter on a fresh copy of the tiny
    transformer, its weights randomised per epoch so each epoch changes the images differently, saved with
    `FluxPipeline.save_lora_weights` (with the adapter metadata) plus `ss_epoch`."""
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from zirelia_local.common.config import GeneratorConfig
    from zirelia_local.dataset.flux import load_flux_pipeline

    pipe = load_flux_pipeline(GeneratorConfig(model=str(tiny_flux_dir), device="cpu"))
    transformer = pipe.transformer
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[int, Path] = {}
    last = max(epochs)
    for epoch in epochs:
        generator = torch.Generator().manual_seed(epoch)
        with torch.no_grad():
            for parameter_name, parameter in transformer.named_parameters():
                if "lora_" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        staging = folder / f".staging-{epoch}"
        FluxPipeline.save_lora_weights(
            staging,
            transformer_lora_layers=get_peft_model_state_dict(transformer),
            transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
            weight_name="lora.safetensors",
        )
        with safe_open(str(staging / "lora.safetensors"), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(staging / "lora.safetensors")
        # sd-scripts' convention: epochs as <name>-<epoch:06d>, the last one as <name>.safetensors.
        target = folder / (f"{name}.safetensors" if epoch == last else f"{name}-{epoch:06d}.safetensors")
        save_file(tensors, str(target), metadata={**metadata, "ss_epoch": str(epoch)})
        (staging / "lora.safetensors").unlink()
        staging.rmdir()
        files[epoch] = target
    return files


class PhotoRenderer:
    """Stands in for FLUX.1-dev with a trained LoRA, which cannot run here (no weights, no GPU): real photos
    instead of generated images. Epoch 1 draws the wrong person; epoch 2 draws the persona, except on a beach
    prompt, where only a retry's stronger trigger phrasing brings the persona back."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.calls: list[tuple[int | None, list[str], float]] = []

    def load_lora(self, lora: Path, epoch: int) -> None:
        assert lora.suffix == ".safetensors"
        self.epoch = epoch

    def render(self, prompts: list[str], seeds: list[int], lora_scale: float) -> list[Image.Image]:
        self.calls.append((self.epoch, list(prompts), lora_scale))
        images = []
        for prompt in prompts:
            strong = prompt.startswith(f"{NAME}, a photo of {NAME},")
            persona = self.epoch == 2 and ("beach" not in prompt or strong)
            images.append(photo("obama" if persona else "biden"))
        return images

    def unload_lora(self) -> None:
        self.epoch = None


def write_placeholder_loras(folder: Path, name: str = NAME, epochs: Sequence[int] = (1, 2)) -> dict[int, Path]:
    """Epoch files for runs drawn by `PhotoRenderer`, which never loads them: they only have to be listed and
    hashed as epochs (a real LoRA file is what `write_epoch_loras` makes)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for epoch in epochs:
        target = folder / (f"{name}.safetensors" if epoch == max(epochs) else f"{name}-{epoch:06d}.safetensors")
        save_file({"placeholder": torch.full((2,), float(epoch))}, str(target), metadata={"ss_epoch": str(epoch)})
        files[epoch] = target
    return files
