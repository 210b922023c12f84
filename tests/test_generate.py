"""Generation on the tiny real FLUX pipeline (CPU): reproducibility, resume, corruption, captions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import REPO, write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.files import sha256_file
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset import run_dataset
from zirelia_local.dataset.generation import render_batch


def test_image_is_the_same_alone_or_in_a_batch(tmp_path, tiny_pipe):
    config = load_config(write_config(tmp_path))
    prompts = ["a man smiling in a park", "a man in a suit, neon light", "profile view on a beach"]
    batch = render_batch(tiny_pipe, prompts, [11, 22, 33], config)
    alone = render_batch(tiny_pipe, prompts[1:2], [22], config)
    # Equal up to float rounding: matmul kernels may sum in another order for another batch size,
    # which can flip the last bit of a pixel; a wrong generator per image changes everything.
    difference = np.abs(np.asarray(batch[1], np.int16) - np.asarray(alone[0], np.int16))
    assert difference.max() <= 1
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))
    assert batch[0].size == (64, 64)


def test_dataset_stage_end_to_end_and_second_run_does_no_work(tmp_path, tiny_pipe):
    config = load_config(write_config(tmp_path, count=5, batch_size=2))
    first = run_dataset(config)
    run_dir = config.run_dir
    assert sorted(first.generation.generated) == [f"img_{i:05d}" for i in range(5)]
    manifest = Manifest(run_dir)
    assert len(manifest) == 5
    for record in manifest:
        path = run_dir / record["file"]
        assert record["status"] == "generated"
        assert sha256_file(path) == record["sha256"]
        with Image.open(path) as image:
            assert image.size == (64, 64)
            assert image.text["seed"] == str(record["seed"])  # the PNG documents its own seed and prompt
        for key in ("file", "prompt", "seed", "axes", "width", "height", "sha256", "status"):
            assert key in record
    second = run_dataset(config)
    assert second.generation.generated == [] and len(second.generation.skipped) == 5


def test_missing_and_corrupt_images_are_regenerated_identically(tmp_path):
    config = load_config(write_config(tmp_path, count=4))
    run_dataset(config)
    run_dir = config.run_dir
    manifest = Manifest(run_dir)
    originals = {r["id"]: (run_dir / r["file"]).read_bytes() for r in manifest}
    (run_dir / "images" / "img_00001.png").unlink()
    (run_dir / "images" / "img_00002.png").write_bytes(originals["img_00002"][:100])  # truncated
    result = run_dataset(config)
    assert sorted(result.generation.generated) == ["img_00001", "img_00002"]
    for image_id, data in originals.items():
        assert (run_dir / "images" / f"{image_id}.png").read_bytes() == data


def test_sigkill_mid_run_resumes_with_nothing_lost_duplicated_or_truncated(tmp_path):
    """A real subprocess is killed with SIGKILL while it generates; the rerun completes the set, and the
    result is byte-identical to an uninterrupted run."""
    count = 24
    reference = load_config(write_config(tmp_path / "ref", count=count, batch_size=3))
    run_dataset(reference)
    expected = {r["id"]: r["sha256"] for r in Manifest(reference.run_dir)}

    path = write_config(tmp_path / "killed", count=count, batch_size=3)
    config = load_config(path)
    manifest_path = config.run_dir / "manifest.jsonl"
    env = {**os.environ, "ZIRELIA_NO_PROGRESS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "zirelia_local", "dataset", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_with = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest_path.exists():
            text = manifest_path.read_text()
            done = text.count('"status": "generated"')
            if 2 <= done < count:
                process.send_signal(signal.SIGKILL)
                killed_with = done
                break
        time.sleep(0.005)
    process.wait(timeout=60)
    assert killed_with is not None, "the run finished before it could be killed"
    assert process.returncode == -signal.SIGKILL

    # Whatever the kill left is consistent: every line parses, no image is half-written under its name.
    partial = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    assert len(partial) == count
    for record in partial:
        if record["status"] == "generated":
            assert sha256_file(config.run_dir / record["file"]) == record["sha256"]

    result = run_dataset(config)
    assert len(result.generation.generated) + len(result.generation.skipped) == count
    assert len(result.generation.skipped) >= killed_with
    final = {r["id"]: r["sha256"] for r in Manifest(config.run_dir)}
    assert final.keys() == expected.keys()
    for image_id in expected:
        # The resumed run batches the remaining images differently: equal up to a pixel's last bit.
        resumed = np.asarray(Image.open(config.run_dir / "images" / f"{image_id}.png"), np.int16)
        uninterrupted = np.asarray(Image.open(reference.run_dir / "images" / f"{image_id}.png"), np.int16)
        assert np.abs(resumed - uninterrupted).max() <= 1, image_id
    assert not list((config.run_dir / "images").glob(".*.tmp"))
    assert sorted(p.name for p in (config.run_dir / "images").iterdir()) == sorted(f"{i}.png" for i in expected)


def test_captions_dataset_toml_and_sample_prompts(tmp_path):
    config = load_config(write_config(tmp_path, count=3))
    result = run_dataset(config)
    folder = result.training_set.folder
    images = sorted(folder.glob("*.png"))
    captions = sorted(folder.glob("*.txt"))
    assert [p.stem for p in images] == [p.stem for p in captions] == ["img_00000", "img_00001", "img_00002"]
    for caption in captions:
        lines = caption.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith("testpersona7, ")
    document = tomllib.loads(result.training_set.dataset_toml.read_text())
    assert set(document) == {"general", "datasets"}
    dataset = document["datasets"][0]
    assert dataset["resolution"] == 64 and dataset["batch_size"] == 1 and dataset["enable_bucket"] is True
    subset = dataset["subsets"][0]
    assert Path(subset["image_dir"]).is_absolute() and Path(subset["image_dir"]) == folder.resolve()
    assert subset["caption_extension"] == ".txt" and subset["num_repeats"] == 1
    # The live identity curve's prompts: the critic's scenes (at most 4), each framed to show the face, the
    # trigger word first, a seed fixed across epochs (the critic's seeds in turn), at the sample size.
    prompts = result.training_set.sample_prompts.read_text().splitlines()
    assert len(prompts) == len(config.critic.prompts) == 4
    for index, line in enumerate(prompts):
        assert line.startswith("testpersona7, a photo of ")
        assert config.critic.prompts[index] in line
        assert f" --w 64 --h 64 --d {config.critic.seeds[index % 2]} --s 2 --g 3.5" in line
    assert "close-up portrait facing the camera" in prompts[0] and "three-quarter view" in prompts[1]
