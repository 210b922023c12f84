"""What draws the critic's evaluation images: the base model the LoRA was trained for, with one epoch's LoRA
loaded at a time.

- `model_type = "flux"`: the `[generator]` FluxPipeline (the one that drew the dataset).
- `model_type = "sdxl"` / `"sd15"`: the base model training used, `[train] pretrained_model` (a diffusers
  folder, or a single `.safetensors` file as sd-scripts takes it), as a StableDiffusion(XL)Pipeline. SD
  models use classifier-free guidance, so FLUX's distilled guidance value is not reused for them, and they are
  drawn at their native size unless `[critic] resolution` says otherwise.

Each epoch's LoRA is loaded with `load_lora_weights` as its own adapter (kohya and diffusers formats both
load), its scale set with `set_adapters`, and deleted after the epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.security import require_safetensors

#: Classifier-free guidance for SD1.5 / SDXL evaluation images (their usual default); FLUX's 3.5 is a
#: distilled-guidance value and would draw washed-out SD images.
SD_GUIDANCE = 7.0
#: The size each SD family was trained at; drawing larger repeats subjects, which the critic would
#: count as extra faces.
SD_NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}


def evaluation_size(config: ZireliaConfig) -> int:
    if config.critic.resolution:
        return config.critic.resolution
    if config.train.model_type == "flux":
        return config.dataset.resolution
    return min(config.dataset.resolution, SD_NATIVE_SIZE[config.train.model_type])


def evaluation_generation_config(config: ZireliaConfig) -> ZireliaConfig:
    """A copy of the config whose generator steps and guidance are the critic's."""
    copy = config.model_copy(deep=True)
    copy._source = config.source
    if config.critic.steps is not None:
        copy.generator.steps = config.critic.steps
    if config.critic.guidance is not None:
        copy.generator.guidance = config.critic.guidance
    elif config.train.model_type != "flux":
        copy.generator.guidance = SD_GUIDANCE
    return copy


def evaluation_base_model(config: ZireliaConfig) -> str:
    """The model the evaluation images are drawn with (recorded with the results, so a change redraws them)."""
    if config.train.model_type == "flux":
        return config.generator.model
    return str(config.train.pretrained_model)


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class EvaluationRenderer(Protocol):
    """Draws evaluation images with one epoch's LoRA at a time."""

    def load_lora(self, lora: Path, epoch: int) -> None: ...

    def render(self, prompts: list[str], seeds: list[int], lora_scale: float) -> list[Any]: ...

    def unload_lora(self) -> None: ...


class _LoraAdapterRenderer:
    """A diffusers pipeline, loaded on first use, with one epoch's LoRA as an adapter at a time."""

    #: which config key names the base model, for error hints
    base_model_key = "[generator] model"

    def __init__(self, config: ZireliaConfig, pipe: Any = None, *, purpose: str = "for the evaluation images") -> None:
        self.config = config
        #: what the pipeline is loaded for, in the loading message
        self.purpose = purpose
        self.generation = evaluation_generation_config(config)
        self.size = evaluation_size(config)
        self._pipe = pipe
        self._adapter: str | None = None

    def _load_pipeline(self) -> Any:
        raise NotImplementedError

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = self._load_pipeline()
        return self._pipe

    def load_lora(self, lora: Path, epoch: int) -> None:
        allow_pickle = self.config.run.allow_pickle
        require_safetensors(lora, "LoRA file", allow_pickle=allow_pickle)
        adapter = f"zirelia_epoch_{epoch}"
        try:
            with _quiet_logger("diffusers.loaders.lora_base"):  # "no LoRA keys for CLIPTextModel": expected
                self.pipe.load_lora_weights(
                    str(lora), adapter_name=adapter, use_safetensors=None if allow_pickle else True
                )
        except Exception as error:  # diffusers raises ValueError/KeyError/RuntimeError for keys it cannot map
            raise ZireliaError(
                f"could not load the LoRA {lora} into {type(self.pipe).__name__}: {error}",
                hint=f"check that it was trained for this base model ({self.base_model_key}) and is complete",
            ) from error
        self._adapter = adapter

    def render(self, prompts: list[str], seeds: list[int], lora_scale: float) -> list[Any]:
        if self._adapter is None:
            raise RuntimeError("load_lora first")
        self.pipe.set_adapters([self._adapter], adapter_weights=[lora_scale])
        return self._draw(prompts, seeds)

    def _draw(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        from zirelia_local.dataset.generation import render_batch

        return render_batch(self.pipe, prompts, seeds, self.generation, size=self.size)

    def unload_lora(self) -> None:
        if self._adapter is not None:
            self.pipe.delete_adapters(self._adapter)
            self._adapter = None


class FluxLoraRenderer(_LoraAdapterRenderer):
    """The `[generator]` FLUX pipeline with each epoch's FLUX LoRA."""

    def _load_pipeline(self) -> Any:
        from zirelia_local.dataset.flux import load_generator_pipeline

        return load_generator_pipeline(self.config, self.purpose)


class StableDiffusionLoraRenderer(_LoraAdapterRenderer):
    """The SD1.5 / SDXL base model of `[train] pretrained_model` with each epoch's LoRA."""

    base_model_key = "[train] pretrained_model"

    def _load_pipeline(self) -> Any:
        return load_stable_diffusion_pipeline(self.config, self.purpose)

    def _draw(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        import torch

        # One generator per image, as for FLUX: each image is reproducible from its own seed.
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
        output = self.pipe(
            prompt=list(prompts),
            height=self.size,
            width=self.size,
            num_inference_steps=self.generation.generator.steps,
            guidance_scale=self.generation.generator.guidance,
            generator=generators,
        )
        return list(output.images)


def load_stable_diffusion_pipeline(config: ZireliaConfig, purpose: str = "for the evaluation images") -> Any:
    """The SD1.5 / SDXL pipeline of `[train] pretrained_model`: a diffusers folder or a single file."""
    from zirelia_local.common.console import info, quiet_library_progress
    from zirelia_local.dataset.flux import resolve_device, resolve_dtype

    model_type = config.train.model_type
    if config.train.pretrained_model in (None, "", "auto"):  # "auto" finds FLUX files only
        raise ZireliaError(
            f"[train] pretrained_model is not set: the critic draws {model_type} images with the base model "
            "that training used",
            hint="set [train] pretrained_model to the model file or diffusers folder you trained on",
        )
    path = Path(config.train.pretrained_model).expanduser()
    if not path.exists():
        raise ZireliaError(
            f"[train] pretrained_model {path} does not exist: the critic needs it to draw the evaluation images",
            hint="point [train] pretrained_model at the model file or diffusers folder you trained on",
        )
    if model_type == "sdxl":
        from diffusers import StableDiffusionXLPipeline as pipeline_class

        extra: dict[str, Any] = {}
    else:
        from diffusers import StableDiffusionPipeline as pipeline_class

        # An evaluation image blacked out by the safety checker would be judged "underexposed", not the LoRA.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    if path.is_dir():
        _check_pipeline_family(path, pipeline_class.__name__, model_type)
    quiet_library_progress()
    device = resolve_device(config.generator.device)
    dtype = resolve_dtype(config.generator.dtype, device)
    allow_pickle = config.run.allow_pickle
    info(f"loading {path} ({model_type}) {purpose} ...")
    try:
        if path.is_dir():
            pipe = pipeline_class.from_pretrained(
                path, dtype=dtype, use_safetensors=None if allow_pickle else True, **extra
            )
        else:
            require_safetensors(path, "[train] pretrained_model", allow_pickle=allow_pickle)
            pipe = pipeline_class.from_single_file(str(path), dtype=dtype, **extra)
    except (OSError, ValueError, KeyError) as error:
        raise ZireliaError(
            f"could not load {path} as a {pipeline_class.__name__}: {error}",
            hint="a single file needs its model config from the hub (or the Hugging Face cache); offline, set "
            "[train] pretrained_model to a diffusers folder of the same model (sd-scripts trains from one too)",
        ) from error
    if config.generator.vae_tiling:
        pipe.vae.enable_tiling()
    if device.type == "cuda" and config.generator.memory in ("model_offload", "sequential_offload"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_pipeline_family(folder: Path, expected: str, model_type: str) -> None:
    """diffusers loads an SD1.5 folder as an SDXL pipeline without complaint (missing parts become None), and
    fails only when drawing: compare the folder's pipeline class with the model type first."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        raise ZireliaError(
            f"[train] pretrained_model {folder} is a folder without model_index.json, not a diffusers pipeline",
            hint="point it at a diffusers pipeline folder or a single .safetensors model file",
        )
    found = json.loads(index.read_text()).get("_class_name")
    if found != expected:
        raise ZireliaError(
            f"[train] pretrained_model {folder} holds a {found}, but [train] model_type = {model_type!r} "
            f"needs a {expected}",
            hint="set [train] model_type to the family of the model you trained on",
        )


def renderer_for(config: ZireliaConfig, *, purpose: str = "for the evaluation images") -> EvaluationRenderer:
    """The renderer for the trained model family; `purpose` says what for when the base model loads."""
    if config.train.model_type == "flux":
        return FluxLoraRenderer(config, purpose=purpose)
    return StableDiffusionLoraRenderer(config, purpose=purpose)
