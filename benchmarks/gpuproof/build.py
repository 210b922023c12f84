"""The models every case loads: FLUX.1-dev-shaped random weights, built on the GPU and saved once.

`build_flux_dev_folder` builds the transformer (19 + 38 blocks at 3072 wide), T5-XXL's encoder, CLIP-L's
text model and the 16-channel VAE directly on the device, seeded, in bf16, with tokenizers of the real
vocabulary sizes, and saves them as a diffusers folder (`FluxPipeline.save_pretrained`: the transformer in
three 10 GB shards, T5-XXL in one file), so every case goes through the project's real loader. The same
files serve sd-scripts: its FLUX loader reads a diffusers transformer given the first of three shards, and
T5-XXL and CLIP-L in transformers' layout; the VAE needs its BFL layout (`ae.safetensors`), written
here by `diffusers_vae_to_bfl`, and CLIP-L under the `text_model.` key names of transformers 4.x (sd-scripts'
pin). With `--tiny` the builtin tiny model stands in for all of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

BUILD_VERSION = 1
MARKER = "gpu_proof_model.json"
KOHYA_DIR = "kohya"
LORA_NAME = "random-rank32.safetensors"


def build_flux_dev_folder(folder: Path, *, device: str, seed: int = 0, shapes: dict[str, Any] | None = None) -> Path:
    """Build and save the four models into `folder` (atomically: built beside it, then renamed)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from gpuproof.tokenizers import build_clip_tokenizer, build_t5_tokenizer
    from zirelia_local.dataset import flux_dev_shapes

    shapes = shapes or {
        "transformer": flux_dev_shapes.TRANSFORMER,
        "t5": flux_dev_shapes.T5_XXL,
        "clip": flux_dev_shapes.CLIP_L,
        "vae": flux_dev_shapes.VAE,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build_clip_tokenizer(staging / "tokenizer")
        build_t5_tokenizer(staging / "tokenizer_2")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
        tokenizer_2 = T5TokenizerFast.from_pretrained(staging / "tokenizer_2")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # parameters are created in bf16: no fp32 copy ever exists
        try:
            with torch.device(device):
                torch.manual_seed(seed)
                transformer = FluxTransformer2DModel(**shapes["transformer"])
                torch.manual_seed(seed + 1)
                vae = AutoencoderKL(**shapes["vae"])
                torch.manual_seed(seed + 2)
                text_encoder = CLIPTextModel(CLIPTextConfig(**shapes["clip"]))
                torch.manual_seed(seed + 3)
                text_encoder_2 = T5EncoderModel(T5Config(**shapes["t5"]))
        finally:
            torch.set_default_dtype(previous)
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**flux_dev_shapes.SCHEDULER),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / MARKER).write_text(json.dumps({"version": BUILD_VERSION, "seed": seed}) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def is_built(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------ files for sd-scripts

_RESNET = {"conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_TOP = {"conv_norm_out": "norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}


def diffusers_vae_to_bfl(state: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the layout of BFL's `ae.safetensors` (what sd-scripts loads).

    The inverse of diffusers' `convert_ldm_vae_checkpoint`: `down_blocks.i.resnets.j` -> `down.i.block.j`,
    `up_blocks.i` -> `up.(n-1-i)`, mid resnets 0/1 -> `mid.block_1/2`, the mid attention's linear q/k/v/out ->
    1x1 convolutions `mid.attn_1.q/k/v/proj_out`.
    """
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        part, _, rest = key.partition(".")
        if part not in ("encoder", "decoder"):
            raise ValueError(f"unexpected VAE key {key!r} (quant convs are absent in FLUX's VAE)")
        if match := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", rest):
            kind, block, what, index, tail = match.groups()
            block_id = int(block) if kind == "down" else num_blocks - 1 - int(block)
            if what == "resnets":
                layer, _, leaf = tail.rpartition(".")
                new = f"{kind}.{block_id}.block.{index}.{_RESNET.get(layer, layer)}.{leaf}"
            else:
                new = f"{kind}.{block_id}.{'downsample' if kind == 'down' else 'upsample'}.{tail}"
        elif match := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", rest):
            layer, _, leaf = match.group(2).rpartition(".")
            new = f"mid.block_{int(match.group(1)) + 1}.{_RESNET.get(layer, layer)}.{leaf}"
        elif match := re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)$", rest):
            layer, leaf = match.groups()
            new = f"mid.attn_1.{_ATTENTION[layer]}.{leaf}"
            if leaf == "weight" and layer != "group_norm":
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        else:
            layer, _, leaf = rest.rpartition(".")
            new = f"{_TOP[layer]}.{leaf}"
        out[f"{part}.{new}"] = tensor
    return out


def write_kohya_files(model_dir: Path, out_dir: Path) -> dict[str, str]:
    """The four files sd-scripts' FLUX trainer takes, from the diffusers folder: the transformer's shards and
    T5-XXL as saved; the VAE in BFL layout and CLIP-L with transformers 4.x's key names rewritten (small)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    shards = sorted((model_dir / "transformer").glob("diffusion_pytorch_model*.safetensors"))
    first = next((path for path in shards if "00001-of-00003" in path.name), None)
    if first is None and len(shards) == 1:
        first = shards[0]
    ae = out_dir / "ae.safetensors"
    if not ae.is_file():
        vae = AutoencoderKL.from_pretrained(model_dir / "vae")
        bfl = diffusers_vae_to_bfl(vae.state_dict(), len(vae.config.down_block_types))
        save_file({key: value.contiguous() for key, value in bfl.items()}, str(ae))
    clip_l = out_dir / "clip_l.safetensors"
    if not clip_l.is_file():
        # transformers 5 saves CLIPTextModel's keys without the `text_model.` its 4.x (sd-scripts' pin) expects.
        state = load_file(str(model_dir / "text_encoder" / "model.safetensors"))
        save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, str(clip_l))
    files = {
        "clip_l": str(clip_l),
        "t5xxl": str(model_dir / "text_encoder_2" / "model.safetensors"),
        "ae": str(ae),
    }
    if first is not None:
        files["pretrained_model"] = str(first)
    else:
        files["problem"] = (
            f"sd-scripts reads a diffusers transformer as one file or as 3 shards; {model_dir / 'transformer'} "
            f"has {len(shards)}"
        )
    return files


# ------------------------------------------------------------------------------------ a random LoRA


def write_random_lora(path: Path, transformer: Any, *, rank: int = 32, alpha: float = 16.0, seed: int = 0) -> Path:
    """A random LoRA of `rank` on every module the project trains, in kohya's FLUX format (as training saves
    it). `transformer` may be on the meta device: only its shapes are read."""
    import torch
    from safetensors.torch import save_file

    from zirelia_local.training.lora_format import kohya_metadata, lora_target_modules, peft_to_kohya

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in lora_target_modules(transformer):
        layer = transformer.get_submodule(name)
        state[f"{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.01
        state[f"{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.01
    tensors = peft_to_kohya(state, alpha=alpha, dtype=torch.bfloat16)
    metadata = kohya_metadata(
        output_name=path.stem,
        network_dim=rank,
        network_alpha=alpha,
        epoch=1,
        steps=1,
        resolution=1024,
        base_model="gpu-proof random FLUX.1-dev-shaped",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------ the build case


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """The build case: the model folder (built, or reused when complete), the LoRA and the kohya files."""
    from diffusers import FluxTransformer2DModel

    started = time.perf_counter()
    if params["tiny"]:
        from zirelia_local.dataset.tiny_flux import ensure_tiny_flux

        model_dir, built = ensure_tiny_flux(), "builtin tiny model"
    else:
        model_dir = Path(params["model_dir"])
        built = "reused (complete from an earlier run)"
        if not is_built(model_dir):
            build_flux_dev_folder(model_dir, device=params["device"], seed=params.get("seed", 0))
            built = "built on the GPU and saved"
    build_s = time.perf_counter() - started
    workdir = Path(params["workdir"])
    config = FluxTransformer2DModel.load_config(model_dir / "transformer")
    import torch

    with torch.device("meta"):
        meta = FluxTransformer2DModel.from_config(config)
    lora = write_random_lora(workdir / LORA_NAME, meta)
    kohya = write_kohya_files(model_dir, workdir / KOHYA_DIR)
    size = sum(path.stat().st_size for path in model_dir.rglob("*") if path.is_file())
    return {
        "model_dir": str(model_dir),
        "how": built,
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "disk_gib": round(size / 1024**3, 2),
        "transformer_params": sum(p.numel() for p in meta.parameters()),
        "lora": str(lora),
        "lora_mib": round(lora.stat().st_size / 1024**2, 1),
        "kohya_files": kohya,
    }
