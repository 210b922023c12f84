"""Where training writes, shared by both backends and read by the critic.

Both backends follow sd-scripts' naming (library/train_util.py) in `<run_dir>/train/`:
per-epoch LoRAs `<name>-<epoch:06d>.safetensors`, the last epoch as `<name>.safetensors`, per-epoch
state folders `<name>-<epoch:06d>-state`, the last state `<name>-state`. Every LoRA file carries its epoch
in the safetensors metadata key `ss_epoch`, which is how the last file's epoch is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig

TRAIN_DIR = "train"
_EPOCH_FILE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})\.safetensors$")


@dataclass
class TrainingResult:
    """What a training run left: the backend, its output folder and the LoRA file of every saved epoch."""

    backend: str
    output_dir: Path
    #: epoch -> LoRA file, as `epoch_lora_files` lists them
    epoch_files: dict[int, Path] = field(default_factory=dict)
    dry_run: bool = False


def train_dir(config: ZireliaConfig) -> Path:
    return config.run_dir / TRAIN_DIR


def read_epoch(path: Path) -> int | None:
    """The `ss_epoch` metadata of a LoRA file, if it has one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            value = (handle.metadata() or {}).get("ss_epoch")
    except Exception:  # a half-written or foreign file has no readable epoch
        return None
    return int(value) if value and value.isdigit() else None


def epoch_lora_files(folder: Path, name: str) -> dict[int, Path]:
    """Epoch number -> LoRA file, for every epoch saved in `folder` under `name`."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.glob(f"{name}-*.safetensors"):
        match = _EPOCH_FILE.match(path.name)
        if match and match.group("name") == name:
            found[int(match.group("epoch"))] = path
    final = folder / f"{name}.safetensors"
    if final.is_file():
        epoch = read_epoch(final)
        if epoch is not None:
            found[epoch] = final
        elif not found:
            found[0] = final  # an epoch-less file (foreign or old): still usable, listed as epoch 0
    return dict(sorted(found.items()))
