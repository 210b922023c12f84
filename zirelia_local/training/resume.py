"""Finding where an interrupted kohya run can continue: the newest complete `--save_state` folder.

sd-scripts (library/train_util.py) names its states `<name>-<epoch:06d>-state` (every saved epoch),
`<name>-state` (train end) and `<name>-step<step:08d>-state` (step saves). Each holds `train_state.json`
= {"current_epoch": N, "current_step": M}, written by train_network.py's save hook, and accelerate's files;
accelerate writes `random_states_<process>.pkl` last, so a folder without it was cut off mid-save and is
skipped. The epoch comes from train_state.json (the name of `<name>-state` carries none).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.training.messages import info
from zirelia_local.training.outputs import read_epoch

TRAIN_STATE_FILE = "train_state.json"


@dataclass(frozen=True)
class SavedState:
    path: Path
    epoch: int | None
    #: optimizer steps completed when the state was saved (train_state.json "current_step")
    step: int | None

    @property
    def label(self) -> str:
        return f"{self.path.name} (epoch {self.epoch if self.epoch is not None else '?'})"


def _state_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}(?:-(?P<epoch>\d{{6}})|-step(?P<step>\d{{8}}))?-state$")


def is_complete_state(folder: Path) -> bool:
    """True when accelerate finished writing the folder (its random-state file, written last, exists)."""
    return folder.is_dir() and any(folder.glob("random_states_*.pkl"))


def read_train_state(folder: Path) -> tuple[int | None, int | None]:
    """(current_epoch, current_step) from a state's train_state.json, None where unreadable."""
    try:
        data = json.loads((folder / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    epoch, step = data.get("current_epoch"), data.get("current_step")
    return (epoch if isinstance(epoch, int) else None, step if isinstance(step, int) else None)


def list_states(folder: Path, name: str) -> list[SavedState]:
    """Every complete state of `name` in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    pattern = _state_pattern(name)
    states = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if not match or not is_complete_state(path):
            continue
        epoch, step = read_train_state(path)
        if epoch is None and match.group("epoch"):
            epoch = int(match.group("epoch"))
        if step is None and match.group("step"):
            step = int(match.group("step"))
        states.append(SavedState(path, epoch, step))
    return sorted(states, key=_order)


def newest_state(folder: Path, name: str) -> SavedState | None:
    """The state to resume from: highest epoch, then highest step, then the most recently written."""
    states = list_states(folder, name)
    return states[-1] if states else None


def _order(state: SavedState) -> tuple[int, int, float]:
    mtime = state.path.stat().st_mtime
    return (state.epoch if state.epoch is not None else -1, state.step if state.step is not None else -1, mtime)


def completed_epoch(output_dir: Path, name: str) -> int | None:
    """The epoch of the final `<name>.safetensors`, if training wrote one."""
    final = output_dir / f"{name}.safetensors"
    return read_epoch(final) if final.is_file() else None


def preserve_final_epoch(output_dir: Path, name: str, state: SavedState | None) -> None:
    """Before training on past a finished run (more epochs), keep its last LoRA under its epoch's name:
    sd-scripts writes the new last epoch to `<name>.safetensors` again."""
    epoch = completed_epoch(output_dir, name)
    if epoch is None or state is None:
        return
    target = output_dir / f"{name}-{epoch:06d}.safetensors"
    if not target.exists():
        os.replace(output_dir / f"{name}.safetensors", target)
        info(f"kept the previous last epoch as {target.name}")
