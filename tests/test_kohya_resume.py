"""Resuming picks the newest complete sd-scripts state, and a finished run keeps its last epoch's file.

The state folders are laid out as sd-scripts and accelerate write them (train_state.json from
train_network.py's save hook, random_states_0.pkl written last by accelerate); the opt-in sd-scripts
test resumes from real ones.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from zirelia_local.training.outputs import epoch_lora_files
from zirelia_local.training.resume import completed_epoch, list_states, newest_state, preserve_final_epoch


def make_state(folder: Path, name: str, *, epoch: int | None, step: int | None, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    save_file({"lora": torch.zeros(2)}, str(folder / "model.safetensors"))
    if epoch is not None:
        (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    if complete:
        (folder / "random_states_0.pkl").write_bytes(b"")  # only its presence is read
    return folder


def make_lora(path: Path, epoch: int) -> Path:
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path), metadata={"ss_epoch": str(epoch)})
    return path


def test_newest_state_is_the_highest_epoch_from_train_state_json(tmp_path):
    make_state(tmp_path / "sienna-000002-state", "sienna", epoch=2, step=40)
    make_state(tmp_path / "sienna-000004-state", "sienna", epoch=4, step=80)
    # The last state's name has no epoch: train_state.json says it is the newest.
    make_state(tmp_path / "sienna-state", "sienna", epoch=5, step=100)
    make_state(tmp_path / "other-000009-state", "other", epoch=9, step=180)  # another LoRA's state
    state = newest_state(tmp_path, "sienna")
    assert state is not None and state.path.name == "sienna-state" and (state.epoch, state.step) == (5, 100)
    assert [s.path.name for s in list_states(tmp_path, "sienna")] == [
        "sienna-000002-state",
        "sienna-000004-state",
        "sienna-state",
    ]


def test_a_state_cut_off_mid_save_is_skipped(tmp_path):
    make_state(tmp_path / "sienna-000003-state", "sienna", epoch=3, step=60)
    make_state(tmp_path / "sienna-000004-state", "sienna", epoch=4, step=80, complete=False)
    assert newest_state(tmp_path, "sienna").path.name == "sienna-000003-state"


def test_epoch_from_the_name_when_train_state_json_is_missing(tmp_path):
    make_state(tmp_path / "sienna-000007-state", "sienna", epoch=None, step=None)
    make_state(tmp_path / "sienna-step00000050-state", "sienna", epoch=None, step=None)
    old = make_state(tmp_path / "sienna-state", "sienna", epoch=None, step=None)
    past = time.time() - 3600
    os.utime(old, (past, past))
    state = newest_state(tmp_path, "sienna")
    assert state.path.name == "sienna-000007-state" and state.epoch == 7


def test_no_state_means_no_resume(tmp_path):
    assert newest_state(tmp_path, "sienna") is None
    assert newest_state(tmp_path / "missing", "sienna") is None


def test_training_on_past_a_finished_run_keeps_its_last_epoch(tmp_path):
    make_lora(tmp_path / "sienna-000001.safetensors", 1)
    make_lora(tmp_path / "sienna.safetensors", 2)
    state = make_state(tmp_path / "sienna-state", "sienna", epoch=2, step=20)
    assert completed_epoch(tmp_path, "sienna") == 2
    preserve_final_epoch(tmp_path, "sienna", newest_state(tmp_path, "sienna"))
    assert not (tmp_path / "sienna.safetensors").exists()
    assert epoch_lora_files(tmp_path, "sienna") == {
        1: tmp_path / "sienna-000001.safetensors",
        2: tmp_path / "sienna-000002.safetensors",
    }
    assert state.is_dir()
