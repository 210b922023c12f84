"""The live identity curve inside the built-in diffusers trainer, on the tiny FLUX pipeline on CPU: the sample
prompts are drawn with the model in memory at each epoch's end, the curve is judged by the critic's checks,
and an early stop ends training after a saved epoch; a rerun with more epochs resumes from its state.

The tiny random model draws no face, so the judge here swaps each drawn sample for a real photo before the
critic's checks see it: obama (the persona) or biden, per epoch. That stands in for what FLUX.1-dev with a
trained LoRA would draw on a GPU. The drawing, the files, the judging and the stop are the real code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_config
from tests.critic_support import NAME, save_reference_identity
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.common.files import read_jsonl
from zirelia_local.critic import LiveJudge
from zirelia_local.faces.dlib_embedder import DlibEmbedder
from zirelia_local.training import run_training

TRAIN = """
[train]
backend = "diffusers"
epochs = 8
learning_rate = 1e-2
network_dim = 4
network_alpha = 4
early_stop = "identity"
early_stop_patience = 2
early_stop_min_epochs = 2
[critic]
prompts = ["reading a book in a library", "on a beach at sunrise"]
seeds = [1001]
"""
SHOWN = {1: "biden", 2: "obama", 3: "obama"}  # then biden again


class PhotoSamplesJudge(LiveJudge):
    """The critic's live judge, shown a photo in place of each drawn sample (see the module docstring)."""

    drawn: list[Path]

    def judge_epoch(self, epoch, images, history, *, since_epoch=0):
        self.drawn = [*getattr(self, "drawn", []), *images]
        folder = self.config.run_dir / "photos"
        folder.mkdir(exist_ok=True)
        stand_ins = []
        for index, _image in enumerate(images):
            path = folder / f"e{epoch}_{index}.png"
            photo(SHOWN.get(epoch, "biden")).save(path)
            stand_ins.append(path)
        return super().judge_epoch(epoch, stand_ins, history, since_epoch=since_epoch)


@pytest.mark.slow
def test_diffusers_training_draws_samples_stops_early_and_trains_on_from_the_saved_state(tmp_path, tiny_flux_dir):
    from zirelia_local.dataset import run_dataset

    config = load_config(write_config(tmp_path, count=2, extra=TRAIN))
    run_dataset(config)
    save_reference_identity(config.run_dir, DlibEmbedder())
    judge = PhotoSamplesJudge(config)
    result = run_training(config, live=judge)
    out = result.output_dir

    # Best at epoch 3 (mean of epochs 2-3 shows the persona), then two epochs without a rise: stopped after 5.
    stop = json.loads((out / "early_stop.json").read_text())
    assert (stop["epoch"], stop["best_epoch"], stop["rule"]) == (5, 3, "patience")
    assert sorted(result.epoch_files) == [1, 2, 3, 4, 5] and not (out / f"{NAME}.safetensors").exists()
    assert (out / f"{NAME}-000005-state" / "train_state.json").is_file()
    # Two samples per epoch, drawn by the tiny model at the sample size, under sd-scripts' names.
    assert len(judge.drawn) == 10 and all(path.parent == out / "sample" for path in judge.drawn)
    assert {Image.open(path).size for path in judge.drawn} == {(64, 64)}
    assert judge.drawn[0].name.startswith(f"{NAME}_e000001_00_") and judge.drawn[0].name.endswith("_1001.png")
    metrics = list(read_jsonl(out / "metrics.jsonl"))
    curve = [m for m in metrics if m.get("event") == "identity"]
    assert [m["epoch"] for m in curve] == [1, 2, 3, 4, 5]
    assert curve[0]["identity"] < 0.4 < 0.7 < curve[1]["identity"]
    assert [m["epoch"] for m in metrics if m.get("event") == "early_stop"] == [5]

    # The same config: nothing to train. More epochs: resume from epoch 5's state, not from scratch.
    assert sorted(run_training(config, live=judge).epoch_files) == [1, 2, 3, 4, 5]
    config.train.epochs = 6
    config.train.early_stop = "off"
    again = run_training(config, live=judge)
    assert sorted(again.epoch_files) == [1, 2, 3, 4, 5, 6] and (out / f"{NAME}.safetensors").is_file()
    steps = [m for m in read_jsonl(out / "metrics.jsonl") if "step" in m and "event" not in m]
    assert [m["epoch"] for m in steps].count(1) == 2 and [m["epoch"] for m in steps].count(6) == 2  # 2 images, batch 1
    assert not (out / "early_stop.json").exists()
