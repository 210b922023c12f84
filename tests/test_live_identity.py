"""The live identity curve: sample images picked up as they appear in the training output folder, judged by the
critic's real checks (dlib faces and embeddings, the reference identity), and the early stop they drive.

The "samples" are the real face photos of tests/data, written epoch by epoch under sd-scripts' sample names:
a stand-in for the images FLUX.1-dev with each epoch's LoRA would draw on a GPU, which cannot run here. The
persona's reference identity is built from obama2 + obama3; the samples show another person (biden) in epochs
1-2, the persona (obama, a photo not in the reference) in 3-5, and the other person again from epoch 6.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from io import BytesIO
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.critic_support import NAME, save_reference_identity
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.common.files import read_jsonl
from zirelia_local.critic import LiveJudge, live_judge
from zirelia_local.faces.dlib_embedder import DlibEmbedder
from zirelia_local.training import live_identity
from zirelia_local.training.live_identity import (
    EARLY_STOP_FILE,
    LiveCurve,
    finish_early_stop,
    finished_early,
    read_curve,
    sample_file_name,
    saved_state_epoch,
    start_live_curve,
)
from zirelia_local.training.runner import run_streaming

LIVE = """
[train]
early_stop = "identity"
early_stop_min_epochs = 2
[critic]
prompts = ["reading a book in a library", "on a beach at sunrise"]
seeds = [1001]
"""
#: who the two samples of each epoch show (1-based epochs)
SHOWN = {1: "biden", 2: "biden", 3: "obama", 4: "obama", 5: "obama", 6: "biden", 7: "biden", 8: "biden"}


@pytest.fixture(scope="module")
def embedder():
    return DlibEmbedder()


@pytest.fixture
def config(tmp_path, embedder):
    config = load_config(write_config(tmp_path, extra=LIVE))
    config.run_dir.mkdir(parents=True)
    save_reference_identity(config.run_dir, embedder)
    return config


def save_epoch(out: Path, epoch: int) -> None:
    """What sd-scripts leaves at an epoch's end, in its order: the LoRA, the state (train_state.json, then
    accelerate's random states last), then the samples. Stand-in files: only names and order matter here."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}-{epoch:06d}.safetensors").write_bytes(b"stand-in for a LoRA file")
    state = out / f"{NAME}-{epoch:06d}-state"
    state.mkdir()
    (state / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": epoch * 2}))
    (state / "random_states_0.pkl").write_bytes(b"")


def write_samples(out: Path, epoch: int, who: str, count: int = 2) -> None:
    (out / "sample").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo(who).save(out / "sample" / sample_file_name(NAME, epoch, index, 1001))


def test_the_curve_rises_and_falls_with_the_face_and_the_early_stop_fires_after_the_saved_epoch(config, monkeypatch):
    monkeypatch.setattr(live_identity, "POLL_INTERVAL_S", 0.0)  # look at every call, not once a second
    out = config.run_dir / "train"
    judge = LiveJudge(config)
    curve = start_live_curve(config, out, judge, resumed_epoch=0)
    watch = curve.watcher(lambda: saved_state_epoch(out, NAME))
    stopped_at = None
    for epoch, who in SHOWN.items():
        save_epoch(out, epoch)
        write_samples(out, epoch, who)
        if (reason := watch()) is not None:
            stopped_at = epoch
            break
    # Patience 3 on the curve smoothed over 2 epochs: best at epoch 4 (obama in 3 and 4), no rise in 5-7.
    assert stopped_at == 7 and reason == "early stop after the saved epoch 7"
    records = read_curve(out / "metrics.jsonl")
    assert [record["epoch"] for record in records] == [1, 2, 3, 4, 5, 6, 7]
    identity = {record["epoch"]: record["identity"] for record in records}
    assert (
        max(identity[1], identity[2], identity[6], identity[7]) < 0.4 < 0.7 < min(identity[3], identity[4], identity[5])
    )
    assert all(record["faces"] == 2 and record["defects"] == 0 for record in records)
    assert records[0]["failures"] == {"identity_weak": 2} and records[3]["accepted"] == 2
    assert records[2]["summary"].startswith("identity 0.7")
    assert curve.stop_request["best_epoch"] == 4 and curve.stop_request["rule"] == "patience"

    # sd-scripts was writing epoch 8's LoRA when it was ended: that file goes, the stop is recorded.
    (out / f"{NAME}-000008.safetensors").write_bytes(b"half a LoRA")
    finish_early_stop(config, curve, out, saved_state_epoch(out, NAME))
    assert not (out / f"{NAME}-000008.safetensors").exists()
    record = json.loads((out / EARLY_STOP_FILE).read_text())
    assert (record["epoch"], record["best_epoch"], record["epochs"]) == (7, 4, config.train.epochs)
    assert "has not improved by more than 0.01 for 3 sampled epoch(s)" in record["reason"]
    assert next(r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "early_stop")["epoch"] == 7

    # The same config does not train on; more epochs (or early_stop = "off") does, counting patience anew.
    assert finished_early(config, out) is not None
    config.train.epochs = 40
    assert finished_early(config, out) is None
    resumed = start_live_curve(config, out, judge, resumed_epoch=7)
    assert resumed.since_epoch == 7 and [r["epoch"] for r in resumed.curve] == [1, 2, 3, 4, 5, 6, 7]
    assert not (out / EARLY_STOP_FILE).exists()


def test_only_whole_samples_of_this_launch_are_judged(config):
    out = config.run_dir / "train"
    write_samples(out, 1, "obama")  # an earlier launch's epoch 1
    an_hour_ago = time.time() - 3600
    for path in (out / "sample").iterdir():
        os.utime(path, (an_hour_ago, an_hour_ago))
    curve = LiveCurve(out, NAME, 2, LiveJudge(config), out / "metrics.jsonl")
    assert curve.complete_epochs() == {}

    photo("obama").save(out / "sample" / sample_file_name(NAME, 2, 0, 1001))
    assert curve.complete_epochs() == {}  # one of the two samples
    png = BytesIO()
    photo("obama").save(png, format="PNG")
    second = out / "sample" / sample_file_name(NAME, 2, 1, 1001)
    second.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # sd-scripts still writing it
    assert curve.complete_epochs() == {}
    second.write_bytes(png.getvalue())
    assert list(curve.complete_epochs()) == [2]


def test_without_a_face_the_curve_says_so_and_never_stops(config):
    from tests.photos import noise

    out = config.run_dir / "train"
    curve = start_live_curve(config, out, live_judge(config), resumed_epoch=0)
    for epoch in range(1, 7):
        save_epoch(out, epoch)
        (out / "sample").mkdir(exist_ok=True)
        for index in range(2):
            noise(64, seed=epoch * 10 + index).save(out / "sample" / sample_file_name(NAME, epoch, index, 1001))
        curve.poll(force=True)
    records = read_curve(out / "metrics.jsonl")
    assert len(records) == 6 and all(r["identity"] is None and r["failures"] == {"no_face": 2} for r in records)
    assert records[0]["summary"] == "no face in any of the 2 sample image(s): no identity to measure (no face found x2)"
    assert curve.stop_request is None


FAKE_TRAINER = textwrap.dedent(
    """
    # Stands in for sd-scripts (not installed here): per epoch it prints `epoch N/M`, saves a LoRA and a state,
    # then the sample images (real photos, standing in for what FLUX would draw), then "trains" a while.
    import json, shutil, sys, time
    from pathlib import Path
    out, name, data = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    shown = json.loads(sys.argv[4])
    for epoch in range(1, len(shown) + 1):
        print(f"epoch {epoch}/{len(shown)}", flush=True)
        (out / f"{name}-{epoch:06d}.safetensors").write_bytes(b"lora")
        state = out / f"{name}-{epoch:06d}-state"
        state.mkdir(parents=True)
        (state / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": epoch}))
        (state / "random_states_0.pkl").write_bytes(b"")
        (out / "sample").mkdir(exist_ok=True)
        for index in range(2):
            stamp = time.strftime("%Y%m%d%H%M%S")
            shutil.copy(data / f"{shown[str(epoch)]}.png", out / "sample" / f"{name}_e{epoch:06d}_{index:02d}_{stamp}_1001.png")
        time.sleep(2.5)
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_the_runner_ends_a_training_process_once_the_curve_asks_and_the_epoch_is_saved(config, tmp_path):
    out = config.run_dir / "train"
    out.mkdir(parents=True)
    photos = tmp_path / "photos"
    photos.mkdir()
    for who in ("obama", "biden"):
        photo(who).save(photos / f"{who}.png")
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    curve = start_live_curve(config, out, live_judge(config), resumed_epoch=0)
    outcome = run_streaming(
        [sys.executable, str(script), str(out), NAME, str(photos), json.dumps(SHOWN)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log_path=out / "train.log",
        metrics_path=out / "metrics.jsonl",
        watch=curve.watcher(lambda: saved_state_epoch(out, NAME)),
        sigint_grace_s=5,
        sigterm_grace_s=5,
    )
    assert outcome.stopped == "early stop after the saved epoch 7"
    assert outcome.epoch == 7 and outcome.returncode != 0 and "done" not in outcome.tail  # ended, not finished
    assert not (out / f"{NAME}-000008.safetensors").exists()
    finish_early_stop(config, curve, out, saved_state_epoch(out, NAME))
    assert json.loads((out / EARLY_STOP_FILE).read_text())["epoch"] == 7
    assert "early stop after the saved epoch 7: stopping sd-scripts" in (out / "train.log").read_text()
