"""What the FLUX transformer trains on: packed VAE latents and T5 / CLIP prompt encodings, cached once.

The text encoders (T5-XXL alone is 9.5 GB in bf16) and the VAE are needed only to turn the training set
into tensors. With the cache, each image and each caption is encoded once; the encoders are then freed and
every epoch (and every rerun) reads the tensors from `train/cache/`. Cache files are content-addressed:
the latents' name is a hash of the image's SHA-256, the resolution and the model; the text encodings' a hash
of the caption, the T5 length and the model. A changed caption re-encodes that caption only; a new image,
that image only; files nothing refers to any more are deleted.

Latents are the VAE posterior mean, shifted and scaled as FluxPipeline does (`(z - shift) * scale`), then
packed into 2x2 patches (sequence of (H/16)*(W/16) tokens of 4 x 16 channels), FluxPipeline's layout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes
from zirelia_local.common.images import ImageRefused, open_image
from zirelia_local.common.paths import display_path

if TYPE_CHECKING:
    import torch
    from diffusers import FluxPipeline

CACHE_DIR = "cache"
CACHE_FORMAT = 1
ENCODE_BATCH = 4


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    image: Path
    caption: str
    image_sha256: str


@dataclass
class Encoded:
    """The tensors of one example: packed latents (seq, 64), T5 output (tokens, dim), CLIP pooled (dim,)."""

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor


@dataclass
class CacheStats:
    latents_encoded: int = 0
    latents_reused: int = 0
    text_encoded: int = 0
    text_reused: int = 0
    removed: list[str] = field(default_factory=list)


def load_square_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB image -> (3, R, R) tensor in [-1, 1]: shorter side resized to R (Lanczos), centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        image = open_image(path)
    except ImageRefused as refused:
        raise ZireliaError(
            f"training image {display_path(path)} cannot be used: {refused.reason}",
            hint="it changed after curation: rerun `zirelia curate CONFIG` to rebuild train_data/",
        ) from None
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class FluxEncoder:
    """The VAE and both text encoders of a FluxPipeline (no transformer), on one device."""

    def __init__(self, pipe: FluxPipeline, *, device: torch.device, max_sequence_length: int) -> None:
        self.pipe = pipe
        self.device = device
        self.max_sequence_length = max_sequence_length

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.vae.dtype

    def encode_images(self, paths: list[Path], resolution: int) -> torch.Tensor:
        """Packed, shifted and scaled latents, (batch, (R/16)^2, 4 * latent channels)."""
        import torch
        from diffusers import FluxPipeline

        vae = self.pipe.vae
        pixels = torch.stack([load_square_image(path, resolution) for path in paths])
        with torch.no_grad():
            latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        batch, channels, height, width = latents.shape
        return FluxPipeline._pack_latents(latents, batch, channels, height, width)

    def encode_prompts(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 hidden states (batch, tokens, dim), CLIP pooled output (batch, dim))."""
        import torch

        with torch.no_grad():
            prompt_embeds, pooled, _text_ids = self.pipe.encode_prompt(
                prompt=captions,
                prompt_2=None,
                device=self.device,
                max_sequence_length=self.max_sequence_length,
            )
        return prompt_embeds, pooled

    def release(self) -> None:
        """Free the encoders' memory (the training loop no longer needs them)."""
        import gc

        import torch

        for name in ("text_encoder", "text_encoder_2", "vae"):
            setattr(self.pipe, name, None)
        self.pipe = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _key(fields: dict[str, Any]) -> str:
    text = json.dumps({**fields, "format": CACHE_FORMAT}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def latents_key(example: Example, *, resolution: int, model_id: str) -> str:
    return _key({"kind": "latents", "image": example.image_sha256, "resolution": resolution, "model": model_id})


def text_key(caption: str, *, max_sequence_length: int, model_id: str) -> str:
    return _key({"kind": "text", "caption": caption, "max_sequence_length": max_sequence_length, "model": model_id})


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata))


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception:  # a damaged cache file is re-encoded, never trusted
        return None


def encode_with_cache(
    examples: list[Example],
    cache_dir: Path,
    *,
    resolution: int,
    max_sequence_length: int,
    model_id: str,
    open_encoder: Any,
    cache_latents: bool = True,
    cache_text: bool = True,
) -> tuple[list[Encoded], CacheStats]:
    """Encodings of `examples`, read from `cache_dir` or encoded (with `open_encoder()`) and written there.

    With `cache_latents` / `cache_text` off, that half is neither read nor written: the caller encodes
    it on the fly each step, and the returned `Encoded` carries an empty tensor in its place.
    `open_encoder` is called at most once, and only when something must be encoded.
    """
    import torch

    stats = CacheStats()
    latents_dir, text_dir = cache_dir / "latents", cache_dir / "text"
    latents: dict[int, torch.Tensor] = {}
    texts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    missing_latents: list[int] = []
    missing_text: list[int] = []
    used: set[Path] = set()
    for index, example in enumerate(examples):
        if cache_latents:
            path = latents_dir / f"{latents_key(example, resolution=resolution, model_id=model_id)}.safetensors"
            used.add(path)
            loaded = _load(path) if path.is_file() else None
            if loaded is not None and "latents" in loaded:
                latents[index] = loaded["latents"]
                stats.latents_reused += 1
            else:
                missing_latents.append(index)
        if cache_text:
            key = text_key(example.caption, max_sequence_length=max_sequence_length, model_id=model_id)
            path = text_dir / f"{key}.safetensors"
            used.add(path)
            loaded = _load(path) if path.is_file() else None
            if loaded is not None and {"prompt_embeds", "pooled_prompt_embeds"} <= set(loaded):
                texts[index] = (loaded["prompt_embeds"], loaded["pooled_prompt_embeds"])
                stats.text_reused += 1
            else:
                missing_text.append(index)

    if missing_latents or missing_text:
        encoder: FluxEncoder = open_encoder()
        for start in range(0, len(missing_latents), ENCODE_BATCH):
            batch = missing_latents[start : start + ENCODE_BATCH]
            encoded = encoder.encode_images([examples[i].image for i in batch], resolution)
            for index, tensor in zip(batch, encoded, strict=True):
                example = examples[index]
                key = latents_key(example, resolution=resolution, model_id=model_id)
                metadata = {"image_sha256": example.image_sha256, "resolution": str(resolution), "model": model_id}
                _save(latents_dir / f"{key}.safetensors", {"latents": tensor}, metadata)
                latents[index] = tensor.detach().to("cpu")
                stats.latents_encoded += 1
        # Identical captions are encoded once.
        by_caption: dict[str, list[int]] = {}
        for index in missing_text:
            by_caption.setdefault(examples[index].caption, []).append(index)
        captions = list(by_caption)
        for start in range(0, len(captions), ENCODE_BATCH):
            batch_captions = captions[start : start + ENCODE_BATCH]
            prompt_embeds, pooled = encoder.encode_prompts(batch_captions)
            for caption, embeds, pooled_one in zip(batch_captions, prompt_embeds, pooled, strict=True):
                key = text_key(caption, max_sequence_length=max_sequence_length, model_id=model_id)
                metadata = {"caption": caption, "max_sequence_length": str(max_sequence_length), "model": model_id}
                _save(
                    text_dir / f"{key}.safetensors",
                    {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled_one},
                    metadata,
                )
                for index in by_caption[caption]:
                    texts[index] = (embeds.detach().to("cpu"), pooled_one.detach().to("cpu"))
                    stats.text_encoded += 1

    for folder, enabled in ((latents_dir, cache_latents), (text_dir, cache_text)):
        if enabled and folder.is_dir():
            for path in folder.glob("*.safetensors"):
                if path not in used:
                    path.unlink(missing_ok=True)
                    stats.removed.append(path.name)

    empty = torch.empty(0)
    results: list[Encoded] = []
    for index in range(len(examples)):
        prompt_embeds, pooled = texts.get(index, (empty, empty))
        results.append(
            Encoded(latents=latents.get(index, empty), prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)
        )
    return results, stats
