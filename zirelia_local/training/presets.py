"""VRAM presets for kohya training: which memory savers to switch on for a card of a given size.

The FLUX rows follow sd-scripts' own guidance (docs/flux_train_network.md, "Recommended Settings by GPU
Memory", with `--fp8_base`): 24 GB trains at batch size 2, 16 GB needs batch size 1 and `--blocks_to_swap`,
12 GB needs `--blocks_to_swap 16` and an 8-bit or Adafactor optimizer. Cards of 40 GB and more hold the
bf16 transformer (about 24 GB) with room for activations, so fp8 is switched off there. Where sd-scripts
gives a range, the presets take the safe end: an out-of-memory crash after model loading and latent caching
costs the user more than a slower step. `docs/training-kohya.md` has the table and the reasoning.

`auto` picks the largest preset that fits the smallest GPU the run will use, and always says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from zirelia_local.training.messages import info, warn

PRESET_NAMES = ("12gb", "16gb", "24gb", "40gb", "80gb")
#: The preset used when `vram = "auto"` finds no CUDA GPU (e.g. a dry run on a laptop).
NO_GPU_FALLBACK = "24gb"
# Smallest total memory (GiB, as torch reports it) for each preset. Cards report a little under their
# marketing size (an RTX 4090 reports 23.99 GiB, a 3090 23.69, an A100-40GB 39.4, an H100 79.2).
MIN_GIB = {"80gb": 70.0, "40gb": 36.0, "24gb": 22.0, "16gb": 15.0, "12gb": 11.0}


@dataclass(frozen=True)
class VramPreset:
    """Memory-related choices of one preset for one model type."""

    name: str
    optimizer: str
    batch_size: int
    resolution: int
    fp8_base: bool = False
    blocks_to_swap: int = 0
    highvram: bool = False


_FLUX = {
    "12gb": VramPreset("12gb", "Adafactor", 1, 512, fp8_base=True, blocks_to_swap=16),
    "16gb": VramPreset("16gb", "AdamW8bit", 1, 768, fp8_base=True, blocks_to_swap=8),
    "24gb": VramPreset("24gb", "AdamW8bit", 2, 1024, fp8_base=True),
    "40gb": VramPreset("40gb", "AdamW", 2, 1024),
    "80gb": VramPreset("80gb", "AdamW", 4, 1024, highvram=True),
}
_SDXL = {
    "12gb": VramPreset("12gb", "Adafactor", 1, 1024),
    "16gb": VramPreset("16gb", "AdamW8bit", 1, 1024),
    "24gb": VramPreset("24gb", "AdamW8bit", 2, 1024),
    "40gb": VramPreset("40gb", "AdamW", 4, 1024),
    "80gb": VramPreset("80gb", "AdamW", 8, 1024, highvram=True),
}
_SD15 = {
    "12gb": VramPreset("12gb", "AdamW8bit", 2, 512),
    "16gb": VramPreset("16gb", "AdamW8bit", 4, 512),
    "24gb": VramPreset("24gb", "AdamW8bit", 6, 512),
    "40gb": VramPreset("40gb", "AdamW", 8, 512),
    "80gb": VramPreset("80gb", "AdamW", 16, 512, highvram=True),
}
PRESETS: dict[str, dict[str, VramPreset]] = {"flux": _FLUX, "sdxl": _SDXL, "sd15": _SD15}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    #: free memory when it was asked (`zirelia doctor` shows it); None when unknown
    free_bytes: int | None = None

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30


@dataclass(frozen=True)
class PresetChoice:
    preset: VramPreset
    #: one sentence: where the choice came from (config, detected card, fallback)
    reason: str
    detected: bool


def get_preset(model_type: str, name: str) -> VramPreset:
    try:
        return PRESETS[model_type][name]
    except KeyError:
        raise ValueError(f"no VRAM preset {name!r} for model type {model_type!r}") from None


def smaller_preset(name: str) -> str | None:
    """The next preset down, or None below 12gb."""
    index = PRESET_NAMES.index(name)
    return PRESET_NAMES[index - 1] if index > 0 else None


def fitting_preset(total_gib: float) -> str | None:
    """The largest preset a card of `total_gib` GiB fits; None below the smallest (12gb)."""
    return preset_name_for_memory(total_gib) if total_gib >= MIN_GIB["12gb"] else None


def preset_name_for_memory(total_gib: float) -> str:
    """The largest preset a card of `total_gib` GiB fits (12gb for anything smaller)."""
    for name in reversed(PRESET_NAMES):
        if total_gib >= MIN_GIB[name]:
            return name
    return "12gb"


def choose_preset(
    model_type: str, vram: str, gpus: list[GpuInfo] | None, *, gpu_ids: str | None = None, num_processes: int = 1
) -> PresetChoice:
    """Resolve `[train] vram` to a preset. `gpus` are the CUDA devices sd-scripts' Python sees (None: unknown)."""
    if vram != "auto":
        return PresetChoice(get_preset(model_type, vram), f"set in the config (vram = {vram!r})", detected=False)
    used = used_gpus(gpus or [], gpu_ids, num_processes)
    if not used:
        why = "no CUDA GPU was detected" if gpus is not None else "the GPU could not be queried"
        return PresetChoice(
            get_preset(model_type, NO_GPU_FALLBACK),
            f"vram = 'auto' but {why}, so it fell back to the {NO_GPU_FALLBACK} preset (the most common card for "
            f"FLUX LoRA training); set [train] vram to your card's size",
            detected=False,
        )
    smallest = min(used, key=lambda gpu: gpu.total_bytes)
    name = preset_name_for_memory(smallest.total_gib)
    cards = ", ".join(f"cuda:{gpu.index} {gpu.name} ({gpu.total_gib:.1f} GiB)" for gpu in used)
    reason = f"vram = 'auto' detected {cards}: {name} preset"
    if smallest.total_gib < MIN_GIB["12gb"]:
        reason += (
            f" (the smallest; {smallest.total_gib:.1f} GiB is below 12 GB: raise blocks_to_swap to 22-28 with "
            "[train.extra_args] and use an fp8 T5-XXL file, as sd-scripts' docs advise for 8-10 GB cards)"
        )
    return PresetChoice(get_preset(model_type, name), reason, detected=True)


def used_gpus(gpus: list[GpuInfo], gpu_ids: str | None, num_processes: int) -> list[GpuInfo]:
    if gpu_ids and gpu_ids.strip() != "all":
        wanted = {int(part) for part in gpu_ids.split(",") if part.strip().isdigit()}
        return [gpu for gpu in gpus if gpu.index in wanted]
    return gpus[: max(1, num_processes)]


def report_choice(choice: PresetChoice, *, batch_size: int, resolution: int, optimizer: str) -> None:
    """Print the chosen preset, the settings in effect (the config's own values win) and why; a warning
    when the preset is a fallback or the card is below the smallest preset."""
    preset = choice.preset
    summary = (
        f"optimizer {optimizer}, batch {batch_size}, resolution {resolution}"
        + (", fp8 base" if preset.fp8_base else "")
        + (f", {preset.blocks_to_swap} blocks swapped to CPU" if preset.blocks_to_swap else "")
    )
    message = f"VRAM preset {preset.name} ({summary}): {choice.reason}"
    if "fell back" in choice.reason or "below 12 GB" in choice.reason:
        warn(message)
    else:
        info(message)


def detect_local_gpus() -> list[GpuInfo] | None:
    """CUDA devices visible to this interpreter's torch (None if torch is missing)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return []
    return [
        GpuInfo(
            index, torch.cuda.get_device_properties(index).name, torch.cuda.get_device_properties(index).total_memory
        )
        for index in range(torch.cuda.device_count())
    ]
