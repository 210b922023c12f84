"""The diffusers backend's resumable training state, in safetensors and JSON (never pickle).

A state folder (sd-scripts' names: `<name>-000002-state`, the last one `<name>-state`) holds:

* `lora.safetensors`: the peft LoRA weights in float32, as `get_peft_model_state_dict` names them;
* `optimizer.safetensors`: every tensor of the optimizer's `state_dict()` under a flat key
  (`state.<param index>.<name>`), and in its metadata the rest as JSON (`param_groups`, non-tensor state);
* `train_state.json`: `{"current_epoch": N, "current_step": M, ...}` as sd-scripts writes it, plus the
  settings that must not change on resume (`fingerprint`).

The folder is written under a temporary name and renamed, so a state folder is always complete.
Only the newest state is kept: each one holds a full copy of the optimizer (twice the LoRA's size).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.files import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import torch

LORA_FILE = "lora.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    folder: Path
    epoch: int
    step: int
    fingerprint: dict[str, Any]


def state_folder_name(name: str, epoch: int, *, last: bool) -> str:
    return f"{name}-state" if last else f"{name}-{epoch:06d}-state"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in extra.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": extra["param_groups"]}


def save_train_state(
    out_dir: Path,
    name: str,
    *,
    epoch: int,
    step: int,
    last: bool,
    lora_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    fingerprint: dict[str, Any],
) -> Path:
    """Write a complete state folder, then delete older state folders of `name`."""
    from safetensors.torch import save

    target = out_dir / state_folder_name(name, epoch, last=last)
    staging = out_dir / f".{target.name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    lora = {key: value.detach().to("cpu").float().contiguous() for key, value in lora_state.items()}
    atomic_write_bytes(staging / LORA_FILE, save(lora))
    tensors, extra = _flatten_optimizer(optimizer_state)
    atomic_write_bytes(staging / OPTIMIZER_FILE, save(tensors, {"optimizer": json.dumps(extra)}))
    atomic_write_json(staging / STATE_FILE, {"current_epoch": epoch, "current_step": step, "fingerprint": fingerprint})
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    for older in find_states(out_dir, name):
        if older.folder != target:
            shutil.rmtree(older.folder, ignore_errors=True)
    return target


def find_states(out_dir: Path, name: str) -> list[TrainState]:
    """Complete state folders of `name` in `out_dir`, oldest first."""
    pattern = re.compile(rf"^{re.escape(name)}(-\d{{6}})?-state$")
    found: list[TrainState] = []
    if not out_dir.is_dir():
        return found
    for folder in out_dir.iterdir():
        if not (folder.is_dir() and pattern.match(folder.name)):
            continue
        try:
            info = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            epoch, step = int(info["current_epoch"]), int(info["current_step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or damaged: ignored
        if (folder / LORA_FILE).is_file() and (folder / OPTIMIZER_FILE).is_file():
            found.append(TrainState(folder, epoch, step, dict(info.get("fingerprint") or {})))
    return sorted(found, key=lambda state: (state.epoch, state.step))


def load_train_state(state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(peft LoRA weights, optimizer state_dict) of a state folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    lora = load_file(str(state.folder / LORA_FILE))
    path = str(state.folder / OPTIMIZER_FILE)
    with safe_open(path, framework="pt") as handle:
        extra = json.loads((handle.metadata() or {})["optimizer"])
    return lora, _unflatten_optimizer(load_file(path), extra)
