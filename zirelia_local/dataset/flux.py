"""Loading a diffusers `FluxPipeline` (or `FluxKontextPipeline`) the way a given card can hold it.

Shared by generation, the critic and the diffusers training backend, so the model is loaded one way
everywhere: `from_pretrained` (hub id, local folder or the built-in tiny model), a dtype, a device from
accelerate, then one memory mode (all on the GPU, model offload, sequential offload) and optionally a
quantized or fp8-stored transformer. FLUX.1 Kontext (`[generator] kontext_model`, the anchored dataset)
is the same architecture and goes through the same code, with the same `[generator]` memory settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import GeneratorConfig, ZireliaConfig
from zirelia_local.common.errors import ConfigError, ZireliaError
from zirelia_local.dataset.tiny_flux import is_builtin, resolve_builtin

if TYPE_CHECKING:
    import torch
    from diffusers import FluxKontextPipeline, FluxPipeline

logger = logging.getLogger(__name__)

GIB = 1024**3
FLUX_DEV_LICENSE_URL = "https://huggingface.co/black-forest-labs/FLUX.1-dev"
# The two kinds of pipeline the stages load: the config key naming the weights, and the diffusers class.
FLUX = ("[generator] model", "FluxPipeline")
KONTEXT = ("[generator] kontext_model", "FluxKontextPipeline")


def resolve_device(spec: str) -> torch.device:
    """`auto` takes accelerate's choice (CUDA, then MPS, then CPU); an explicit device must exist."""
    import torch

    from zirelia_local.common.processes import is_distributed, process_device

    if is_distributed() and spec in ("auto", "cuda"):
        return process_device()  # one device per process of the launch: cuda:<local rank>
    if spec == "auto":
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ZireliaError(
                f"the config asks for device {spec!r} but this PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                hint="install a CUDA build of PyTorch that matches your driver (pytorch.org/get-started), "
                'check `nvidia-smi`, or set device = "cpu" / "auto" in [generator]',
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ZireliaError(
                f"the config asks for {spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible",
                hint="use cuda:0 .. cuda:N-1, or check CUDA_VISIBLE_DEVICES",
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ZireliaError("the config asks for device 'mps' but MPS is not available", hint='set device = "auto"')
    return device


def refuse_real_model_on_auto_cpu(gen: GeneratorConfig, device: torch.device, model: str | None = None) -> None:
    """`device = "auto"` that found no GPU must not quietly start FLUX.1-dev on the CPU: about 50 GB of RAM
    and hours per image. An explicit `device = "cpu"` (a small local model, a patient user) still runs.
    `model` defaults to `gen.model` (the Kontext loader passes `gen.kontext_model`)."""
    model = model or gen.model
    if gen.device == "auto" and device.type == "cpu" and not is_builtin(model):
        raise ZireliaError(
            f'no GPU found for {model} ([generator] device = "auto"): a FLUX-size model on the CPU needs '
            "about 50 GB of RAM and hours per image",
            hint="run on a machine with a CUDA GPU (`zirelia doctor CONFIG` checks it), try configs/demo.toml on "
            'this one, or set [generator] device = "cpu" to run on the CPU anyway',
        )


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA (float16 on cards without bf16), float32 elsewhere."""
    import torch

    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class MemoryPlan:
    memory: str
    quantization: str
    reason: str
    #: Why `auto` did not get its first choice (nf4 without a usable bitsandbytes), else None.
    fallback: str | None = None


def gpu_total_memory(device: torch.device) -> int | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device.index or 0).total_memory


def plan_memory(gen: GeneratorConfig, device: torch.device, *, total_memory: int | None = None) -> MemoryPlan:
    """Resolve `memory` / `quantization` = auto from the card's memory; explicit settings are kept."""
    if total_memory is None:
        total_memory = gpu_total_memory(device)
    memory, quantization = gen.memory, gen.quantization
    if device.type != "cuda":
        reason = f"device {device.type}: everything stays on it"
        chosen = ("none" if memory == "auto" else memory, "none" if quantization == "auto" else quantization)
        return MemoryPlan(*chosen, reason=reason)
    gib = (total_memory or 0) / GIB
    if gib >= 39:
        auto = ("none", "none")
    elif gib >= 15:
        # The bf16 transformer alone is 23.8 GB: store it in fp8 (12 GB) and move models in turn.
        auto = ("model_offload", "fp8_storage")
    elif gib >= 11:
        auto = ("model_offload", "bnb_nf4")
    else:
        auto = ("sequential_offload", "none")
    chosen_memory = auto[0] if memory == "auto" else memory
    chosen_quant = (auto[1] if memory == "auto" else "none") if quantization == "auto" else quantization
    fallback = None
    if chosen_quant == "bnb_nf4" and quantization == "auto":
        problem = bitsandbytes_problem()
        if problem is not None:
            # fp8 storage holds the transformer in 12 GB: on a 12 GB card that leaves little room, so say why.
            chosen_quant = "fp8_storage"
            fallback = f"nf4 was the choice, but {problem}, so fp8 storage instead (pip install bitsandbytes)"
    reason = f"{gib:.0f} GiB GPU" + (f"; {fallback}" if fallback else "")
    return MemoryPlan(chosen_memory, chosen_quant, reason=reason, fallback=fallback)


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot be used here (not installed, or its import fails), or None when it can."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # a broken install raises anything from OSError to RuntimeError
        return f"bitsandbytes fails to import ({type(error).__name__}: {error})"
    return None


def resolve_model_source(model: str, key: str = FLUX[0]) -> str:
    """A local folder, a built-in model's folder, or a hub id (returned unchanged); `key` names the config key
    in messages."""
    if is_builtin(model):
        return str(resolve_builtin(model))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ZireliaError(
                f"{path} is not a diffusers pipeline folder (no model_index.json)",
                hint=f"point {key} at a folder saved with save_pretrained (or a hub id); single-file "
                "checkpoints like flux1-dev.safetensors are for [train] pretrained_model",
            )
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        example = "black-forest-labs/FLUX.1-Kontext-dev" if key == KONTEXT[0] else "black-forest-labs/FLUX.1-dev"
        raise ConfigError(
            f"{key} {model!r} is neither an existing folder nor a hub id like 'owner/name'",
            hint=f"check the path, or use '{example}'",
        )
    return model


def hub_token() -> str | None:
    """The Hugging Face token to send: $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, else the one `hf auth login` stored.

    None when there is none (public and cached models need none); a broken hub install counts as none too,
    since a missing token only matters for gated downloads, which `explain_load_failure` then explains.
    """
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def explain_load_failure(model: str, error: BaseException, key: str = FLUX[0]) -> ZireliaError:
    """The user-facing error for a failed hub load of `model`: gated (no or refused token), wrong revision,
    no such repository, or not cached while offline, read from `error` and its causes. `key` is the config
    key that names the model ([generator] model or [generator] kontext_model).

    Every stage that loads FLUX weights from the hub raises this, so the hints stay the same everywhere.
    """
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = " ".join(str(item) for item in chain)
    if any(isinstance(item, GatedRepoError) for item in chain) or " 401" in text or " 403" in text:
        has_token = hub_token() is not None
        return ZireliaError(
            f"{model} is a gated repository and the hub refused access"
            + (" with the token found" if has_token else " (no token found)"),
            hint=f"accept the licence at {_licence_url(model)} with your account, create a read token, "
            "then `export HF_TOKEN=hf_...` (or `hf auth login`) and run again",
        )
    if any(isinstance(item, RevisionNotFoundError) for item in chain):
        # [generator] model -> [generator] revision; [generator] kontext_model -> [generator] kontext_revision
        return ZireliaError(f"revision not found for {model}", hint=f"check {key.replace('model', 'revision')}")
    if any(isinstance(item, RepositoryNotFoundError) for item in chain):
        return ZireliaError(
            f"no model {model!r} on the hub (or it is private)",
            hint=f"check the spelling of {key}, or point it at a local diffusers folder",
        )
    return ZireliaError(
        f"could not load the FLUX weights {model!r}: they are not in the local Hugging Face cache and the hub "
        "could not be reached",
        hint=f"on a machine with internet, run `hf download {model}` (after accepting the licence and setting "
        f"HF_TOKEN), or copy the model folder here and set {key} to its path; HF_HOME / HF_HUB_CACHE choose "
        "where the cache lives",
    )


def _licence_url(model: str) -> str:
    """The hub page where a gated model's licence is accepted (FLUX.1-dev's when `model` is a local path)."""
    if model.count("/") == 1 and not Path(model).exists():
        return f"https://huggingface.co/{model}"
    return FLUX_DEV_LICENSE_URL


def load_flux_pipeline(
    gen: GeneratorConfig, *, device: torch.device | None = None, allow_pickle: bool = False
) -> FluxPipeline:
    """Load the configured FluxPipeline onto `device` (default: `gen.device`) with its memory mode applied.

    Only safetensors weights are read unless `allow_pickle` (the config's `[run] allow_pickle`) is set.
    """
    return _load_pipeline(gen, gen.model, gen.revision, FLUX, device=device, allow_pickle=allow_pickle)


def load_kontext_pipeline(
    gen: GeneratorConfig, *, device: torch.device | None = None, allow_pickle: bool = False
) -> FluxKontextPipeline:
    """Load `[generator] kontext_model` as a FluxKontextPipeline, with the same device, dtype, memory mode and
    quantization as the FLUX generator (the transformers are the same size)."""
    return _load_pipeline(
        gen, gen.kontext_model, gen.kontext_revision, KONTEXT, device=device, allow_pickle=allow_pickle
    )


def _load_pipeline(
    gen: GeneratorConfig,
    model: str,
    revision: str | None,
    kind: tuple[str, str],
    *,
    device: torch.device | None,
    allow_pickle: bool,
) -> Any:
    import diffusers
    import torch

    from zirelia_local.common.console import quiet_library_progress

    key, class_name = kind
    quiet_library_progress()
    device = device if device is not None else resolve_device(gen.device)
    refuse_real_model_on_auto_cpu(gen, device, model)
    dtype = resolve_dtype(gen.dtype, device)
    plan = plan_memory(gen, device)
    source = resolve_model_source(model, key)
    if plan.memory != "none" and device.type != "cuda":
        raise ZireliaError(
            f"[generator] memory = {plan.memory!r} needs a CUDA GPU, but the device is {device}",
            hint='set memory = "none" (or "auto") on CPU',
        )
    if plan.quantization.startswith("bnb_"):
        problem = "the device is not a CUDA GPU" if device.type != "cuda" else bitsandbytes_problem()
        if problem is not None:
            raise ZireliaError(
                f"[generator] quantization = {plan.quantization!r} needs bitsandbytes and a CUDA GPU, but {problem}",
                hint='`pip install bitsandbytes` on a CUDA machine, or use quantization = "fp8_storage"',
            )
    if plan.fallback is not None:
        logger.warning("memory mode %s, quantization %s (%s)", plan.memory, plan.quantization, plan.reason)
    elif device.type == "cuda" and (plan.memory != gen.memory or plan.quantization != gen.quantization):
        logger.info("memory mode %s, quantization %s (%s)", plan.memory, plan.quantization, plan.reason)

    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": None if allow_pickle else True}
    if not Path(source).exists():
        kwargs["revision"] = revision
        kwargs["token"] = hub_token()
    if plan.quantization.startswith("bnb_"):
        from diffusers.quantizers import PipelineQuantizationConfig

        if plan.quantization == "bnb_nf4":
            backend = "bitsandbytes_4bit"
            quant_kwargs: dict[str, Any] = {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": dtype,
            }
        else:
            backend, quant_kwargs = "bitsandbytes_8bit", {"load_in_8bit": True}
        kwargs["quantization_config"] = PipelineQuantizationConfig(
            quant_backend=backend, quant_kwargs=quant_kwargs, components_to_quantize=["transformer"]
        )
    try:
        pipe = getattr(diffusers, class_name).from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source).exists():
            pickled = sorted({p.suffix for p in Path(source).rglob("*") if p.suffix in (".bin", ".pt", ".ckpt")})
            if pickled and not allow_pickle:
                raise ZireliaError(
                    f"{source} holds pickled weights ({', '.join(pickled)}) where safetensors are required",
                    hint="re-save the pipeline with save_pretrained(safe_serialization=True), or set "
                    "`allow_pickle = true` under [run] if you trust its source",
                ) from error
            raise ZireliaError(f"could not load the pipeline from {source}: {error}") from error
        raise explain_load_failure(source, error, key) from error

    if plan.quantization == "fp8_storage":
        # Weights stored in fp8 (half of bf16), upcast layer by layer for compute.
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if gen.vae_tiling:
        pipe.vae.enable_tiling()
    if plan.memory == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.memory == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_generator_pipeline(config: ZireliaConfig, purpose: str = "") -> FluxPipeline:
    """The stages' FLUX pipeline: `[generator]` with the run's `[run] allow_pickle`, announced on the console."""
    from zirelia_local.common.console import info

    info(f"loading {config.generator.model}{f' {purpose}' if purpose else ''} ...")
    return load_flux_pipeline(config.generator, allow_pickle=config.run.allow_pickle)


def load_dataset_pipeline(config: ZireliaConfig, purpose: str = "") -> Any:
    """The pipeline that draws the dataset's planned images: FLUX.1 Kontext with `[dataset] identity =
    "anchor"`, else the FLUX generator (curation's top-ups draw with it too)."""
    if config.dataset.identity != "anchor":
        return load_generator_pipeline(config, purpose)
    from zirelia_local.common.console import info

    info(f"loading {config.generator.kontext_model}{f' {purpose}' if purpose else ''} ...")
    return load_kontext_pipeline(config.generator, allow_pickle=config.run.allow_pickle)


def release_pipeline_memory() -> None:
    """Give the memory of dropped pipelines back (GPU memory too) before another process needs it."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
