"""The peft LoRA of a diffusers FLUX transformer, saved in the kohya (sd-scripts) FLUX LoRA format.

Why this format: it is what sd-scripts writes (`networks/lora_flux.py`), what ComfyUI and the WebUIs load,
and `FluxPipeline.load_lora_weights` reads it too. Keys name the BFL (original FLUX) layers:
`lora_unet_double_blocks_{i}_img_attn_qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`, and so on.

diffusers keeps separate layers where BFL fuses them:

* double block `img_attn.qkv` = diffusers `attn.to_q`, `to_k`, `to_v`; `txt_attn.qkv` = `add_q/k/v_proj`;
* single block `linear1` = `attn.to_q`, `to_k`, `to_v`, `proj_mlp` (outputs stacked in that order).

A rank-r LoRA on each of n separate layers is *exactly* one rank n*r LoRA on the fused layer: `lora_down`
is the n down matrices stacked (n*r x in), `lora_up` is block-diagonal (each up matrix in its own rows and
rank columns, zeros elsewhere). A reader scales a LoRA by `alpha / rank` with rank = `lora_down` rows, so the
fused module's alpha is n * alpha to keep the scale unchanged. (sd-scripts' own `split_qkv` merge keeps the
alpha unchanged instead, which makes readers apply 1/n of the trained update.)

diffusers' reader (`_convert_kohya_flux_lora_to_diffusers`) detects the block-diagonal form and splits it back
exactly, but for single-block `linear1` its split sizes are hard-coded to FLUX.1's widths
(3072, 3072, 3072, 12288): any other width fails an assertion. `lora_target_modules` therefore leaves a
single block's q/k/v/proj_mlp out of training when the model has other widths (the tiny test model), so the
saved file always loads in diffusers. FLUX.1-dev and schnell have these widths and get every projection.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

KOHYA_PREFIX = "lora_unet"
#: The widths of a single block's linear1 parts (q, k, v, proj_mlp) that diffusers' kohya reader assumes.
DIFFUSERS_LINEAR1_SPLITS = (3072, 3072, 3072, 12288)

# diffusers module name inside a block -> (kohya module suffix, position inside the fused BFL layer or None).
_DOUBLE_BLOCK_MAP: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
}
_SINGLE_BLOCK_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_SINGLE_BLOCK_MAP: dict[str, tuple[str, int | None]] = {
    **{name: ("linear1", index) for index, name in enumerate(_SINGLE_BLOCK_LINEAR1)},
    "proj_out": ("linear2", None),
}
_FUSED_PARTS = {"img_attn_qkv": 3, "txt_attn_qkv": 3, "linear1": 4}

_PEFT_KEY = re.compile(
    r"^(?:transformer\.)?(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<block>\d+)\."
    r"(?P<module>.+)\.(?P<ab>lora_A|lora_B)(?:\.default)?\.weight$"
)


def single_linear1_loadable(transformer: Any) -> bool:
    """Whether diffusers can read a `linear1` LoRA of this model's single blocks (FLUX.1's widths only)."""
    if not transformer.single_transformer_blocks:
        return False
    block = transformer.single_transformer_blocks[0]
    widths = (
        block.attn.to_q.out_features,
        block.attn.to_k.out_features,
        block.attn.to_v.out_features,
        block.proj_mlp.out_features,
    )
    return widths == DIFFUSERS_LINEAR1_SPLITS


def lora_target_modules(transformer: Any, *, single_linear1: bool | None = None) -> list[str]:
    """Full names of the transformer's attention and MLP projections that the LoRA trains.

    Double blocks: q/k/v/out of both streams and both MLPs. Single blocks: `proj_out` (BFL `linear2`) and,
    when `single_linear1` (default: when diffusers can reload it, see the module docstring), q/k/v/proj_mlp.
    Full names, because a bare `proj_out` would also match the transformer's final output layer.
    """
    if single_linear1 is None:
        single_linear1 = single_linear1_loadable(transformer)
    names: list[str] = []
    for index in range(len(transformer.transformer_blocks)):
        names += [f"transformer_blocks.{index}.{module}" for module in _DOUBLE_BLOCK_MAP]
    for index in range(len(transformer.single_transformer_blocks)):
        modules = list(_SINGLE_BLOCK_MAP) if single_linear1 else ["proj_out"]
        names += [f"single_transformer_blocks.{index}.{module}" for module in modules]
    return names


@dataclass(frozen=True)
class _Part:
    down: torch.Tensor  # lora_A, (r, in)
    up: torch.Tensor  # lora_B, (out, r)


def peft_to_kohya(
    peft_state: Mapping[str, torch.Tensor], *, alpha: float, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Convert a peft LoRA state dict of a FluxTransformer2DModel to kohya FLUX keys.

    `peft_state` is what `peft.get_peft_model_state_dict(transformer)` returns (keys like
    `transformer_blocks.0.attn.to_q.lora_A.weight`, one rank for all layers); `alpha` is the LoRA's
    `lora_alpha`. Separate layers that BFL fuses are fused exactly (see the module docstring); a fused group
    must be complete (all of q, k, v; or q, k, v, proj_mlp). `dtype` casts the weights (default: unchanged);
    alphas are always float32 scalars.
    """
    import torch

    groups: dict[str, dict[int | None, _Part]] = {}
    suffix_of: dict[str, str] = {}
    pending: dict[tuple[str, int | None], dict[str, torch.Tensor]] = {}
    for key, tensor in peft_state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"LoRA key {key!r} is not on a FLUX double/single block projection")
        table = _DOUBLE_BLOCK_MAP if match["kind"] == "transformer_blocks" else _SINGLE_BLOCK_MAP
        if match["module"] not in table:
            raise ValueError(f"LoRA key {key!r}: module {match['module']!r} has no kohya FLUX name")
        suffix, position = table[match["module"]]
        kind = "double_blocks" if match["kind"] == "transformer_blocks" else "single_blocks"
        name = f"{KOHYA_PREFIX}_{kind}_{match['block']}_{suffix}"
        suffix_of[name] = suffix
        pending.setdefault((name, position), {})[match["ab"]] = tensor
    for (name, position), pair in pending.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"LoRA of {name} (part {position}) lacks lora_A or lora_B")
        groups.setdefault(name, {})[position] = _Part(down=pair["lora_A"], up=pair["lora_B"])

    out: dict[str, torch.Tensor] = {}
    for name in sorted(groups):
        parts = groups[name]
        if None in parts:
            down, up, fused = parts[None].down, parts[None].up, 1
        else:
            fused = _FUSED_PARTS[suffix_of[name]]
            missing = [i for i in range(fused) if i not in parts]
            if missing:
                raise ValueError(
                    f"{name} fuses {fused} diffusers layers but the LoRA lacks part(s) {missing}: "
                    "train all of q/k/v (and proj_mlp for single blocks) or none"
                )
            ordered = [parts[i] for i in range(fused)]
            down = torch.cat([p.down for p in ordered], dim=0)
            up = torch.block_diag(*[p.up for p in ordered])
        cast = dtype or down.dtype
        out[f"{name}.lora_down.weight"] = down.detach().to("cpu", cast).contiguous()
        out[f"{name}.lora_up.weight"] = up.detach().to("cpu", cast).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha) * fused, dtype=torch.float32)
    return out


def kohya_network_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """`sshs_model_hash` / `sshs_legacy_hash`, the hashes WebUI extensions index LoRAs by.

    As sd-scripts computes them: the file serialised with only its `ss_*` metadata; the model hash is the
    SHA-256 of everything after the header, the legacy hash the first 8 hex digits of the SHA-256 of the
    64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    data = save(dict(tensors), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    buffer = io.BytesIO(data)
    buffer.seek(0x100000)
    legacy = hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]
    return {"sshs_model_hash": hashlib.sha256(data[8 + header :]).hexdigest(), "sshs_legacy_hash": legacy}


def kohya_metadata(
    *,
    output_name: str,
    network_dim: int,
    network_alpha: float,
    epoch: int,
    steps: int,
    resolution: int,
    base_model: str,
    training: Mapping[str, Any] | None = None,
    trigger_phrase: str | None = None,
    started_at: datetime | None = None,
) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` metadata sd-scripts writes into a FLUX LoRA (all values are strings)."""
    now = datetime.now(UTC)
    metadata: dict[str, str] = {
        "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(network_dim),
        "ss_network_alpha": _number(network_alpha),
        "ss_network_args": json.dumps({"train_blocks": "all"}),
        "ss_base_model_version": "flux1",
        "ss_model_type": "flux",
        "ss_sd_model_name": base_model,
        "ss_output_name": output_name,
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_network_train_unet_only": "True",
        "ss_training_finished_at": str(now.timestamp()),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "flux-1-dev/lora",
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": f"{output_name}_{epoch}",
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if started_at is not None:
        metadata["ss_training_started_at"] = str(started_at.timestamp())
    if trigger_phrase:
        metadata["modelspec.trigger_phrase"] = trigger_phrase
    for key, value in (training or {}).items():
        metadata[key if key.startswith(("ss_", "modelspec.", "zirelia_")) else f"ss_{key}"] = _string(value)
    return metadata


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)
