"""What the diffusers backend trains on: the training set's images and captions, the FLUX components that
encode them, and each step's batch tensors (from the encoding cache, or encoded on the fly)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import sha256_file
from zirelia_local.training.diffusers_plan import DiffusersTrainPlan
from zirelia_local.training.flux_cache import Encoded, Example, FluxEncoder

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_examples(folder: Path, image_ids: list[str]) -> list[Example]:
    """The image and first caption line of each id in `folder` (the rebuilt `train_data/`), in that order.

    A missing image or caption, or an empty caption, is an error: training on it would teach the wrong thing.
    """
    examples: list[Example] = []
    for image_id in image_ids:
        image = next(
            (folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{image_id}{suffix}").is_file()),
            None,
        )
        caption_path = folder / f"{image_id}.txt"
        if image is None or not caption_path.is_file():
            raise ZireliaError(
                f"{folder} lacks the image or caption of {image_id}",
                hint="rerun `zirelia caption CONFIG` to rebuild the training set",
            )
        caption = (
            caption_path.read_text(encoding="utf-8").splitlines()[0].strip() if caption_path.stat().st_size else ""
        )
        if not caption:
            raise ZireliaError(f"caption {caption_path} is empty", hint="rerun `zirelia caption CONFIG`")
        examples.append(Example(image=image, caption=caption, image_sha256=sha256_file(image)))
    return examples


def load_component(loader: Any, source: str, config: ZireliaConfig, **kwargs: Any) -> Any:
    """`loader(source, **kwargs)` (a `from_pretrained`), with the hub's failures explained as in generation."""
    from zirelia_local.common.console import quiet_library_progress
    from zirelia_local.dataset.flux import explain_load_failure, hub_token

    quiet_library_progress()
    # Safetensors only, unless the user opted in to pickled weights ([run] allow_pickle).
    kwargs.setdefault("use_safetensors", None if config.run.allow_pickle else True)
    if not Path(source).exists():
        kwargs.setdefault("revision", config.generator.revision)
        kwargs.setdefault("token", hub_token())
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source).exists():
            raise ZireliaError(f"could not load the model from {source}: {error}") from error
        raise explain_load_failure(source, error) from error


def load_encoder(config: ZireliaConfig, plan: DiffusersTrainPlan) -> FluxEncoder:
    """The FLUX pipeline without its transformer (VAE, CLIP, T5) on the plan's device, wrapped to encode."""
    import torch
    from diffusers import FluxPipeline

    info("loading the VAE and text encoders to encode the training set")
    dtype = getattr(torch, plan.weight_dtype)
    pipe = load_component(FluxPipeline.from_pretrained, plan.model_source, config, transformer=None, dtype=dtype)
    pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    return FluxEncoder(pipe, device=torch.device(plan.device), max_sequence_length=plan.max_sequence_length)


def batch_tensors(
    batch: list[Example],
    indices: list[int],
    encoded: list[Encoded],
    encoder: FluxEncoder | None,
    plan: DiffusersTrainPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed latents, T5 embeddings, CLIP pooled) of one batch; `indices` are the examples' positions.

    Cached parts are stacked from `encoded`; the rest is encoded now by `encoder`, which the loop keeps
    open exactly when a part is not cached.
    """
    import torch

    if plan.cache_latents:
        x0 = torch.stack([encoded[i].latents for i in indices])
    else:
        x0 = encoder.encode_images([example.image for example in batch], plan.resolution)
    if plan.cache_text_encoder_outputs:
        prompt_embeds = torch.stack([encoded[i].prompt_embeds for i in indices])
        pooled = torch.stack([encoded[i].pooled_prompt_embeds for i in indices])
    else:
        prompt_embeds, pooled = encoder.encode_prompts([example.caption for example in batch])
    return x0, prompt_embeds, pooled
