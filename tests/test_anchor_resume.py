"""SIGKILL during identity-anchored generation (a real subprocess, the tiny real FluxKontextPipeline), then a
rerun: the anchor is reused, no finished image is drawn again, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO, assert_no_temp_files, write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.files import sha256_file
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset import run_dataset

COUNT = 12


def _anchored(tmp_path):
    """12 images from the photo anchor at 128 px (its face is ~57 px there: [curate] min_face_size 48)."""
    path = write_config(tmp_path, count=COUNT, batch_size=2, extra='\n[curate]\nmin_face_size = 48\nmode = "record"\n')
    text = path.read_text().replace(
        "[dataset]\n", f'[dataset]\nidentity = "anchor"\nanchor_image = "{DATA / "obama.jpg"}"\n', 1
    )
    text = text.replace("resolution = 64\n", "resolution = 128\n", 1)
    text = text.replace(
        'model = "builtin:tiny-flux"\n', 'model = "builtin:tiny-flux"\nkontext_model = "builtin:tiny-flux-kontext"\n'
    )
    path.write_text(text)
    return path


@pytest.mark.slow
def test_sigkill_during_anchored_generation_then_rerun_redraws_nothing_and_loses_nothing(tmp_path):
    reference = load_config(_anchored(tmp_path / "ref"))
    run_dataset(reference)
    expected = {row["id"]: row["sha256"] for row in Manifest(reference.run_dir)}
    assert len(expected) == COUNT

    path = _anchored(tmp_path / "killed")
    config = load_config(path)
    manifest_path = config.run_dir / "manifest.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "zirelia_local", "dataset", str(path)],
        cwd=REPO,
        env={**os.environ, "ZIRELIA_NO_PROGRESS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_with = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if manifest_path.exists():
            done = manifest_path.read_text().count('"status": "generated"')
            if 2 <= done < COUNT:
                process.send_signal(signal.SIGKILL)
                killed_with = done
                break
        time.sleep(0.005)
    process.wait(timeout=60)
    assert killed_with is not None, "the run finished before it could be killed"
    assert process.returncode == -signal.SIGKILL

    # What the kill left: a whole manifest whose drawn rows match their files, made from the anchor on disk.
    anchor_sha = json.loads((config.run_dir / "anchor.json").read_text())["sha256"]
    assert sha256_file(config.run_dir / "anchor.png") == anchor_sha
    partial = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    finished = {}
    for row in partial:
        if row["status"] == "generated":
            assert sha256_file(config.run_dir / row["file"]) == row["sha256"]
            assert row["method"] == "anchor" and row["anchor"]["sha256"] == anchor_sha
            finished[row["id"]] = row["sha256"]
    assert len(finished) >= killed_with

    result = run_dataset(config)
    # Nothing redrawn: every image finished before the kill is skipped and its file is untouched ...
    assert set(finished) <= set(result.generation.skipped)
    assert not set(finished) & set(result.generation.generated)
    assert result.anchor is not None and result.anchor.sha256 == anchor_sha  # the anchor is reused too
    final = {row["id"]: row for row in Manifest(config.run_dir)}
    for image_id, sha in finished.items():
        assert final[image_id]["sha256"] == sha
    # ... and nothing lost: the whole plan is there, as an uninterrupted run draws it (to a pixel's last bit:
    # the rerun batches the remaining images differently).
    assert final.keys() == expected.keys()
    assert len(result.generation.generated) + len(result.generation.skipped) == COUNT
    for image_id in expected:
        resumed = np.asarray(Image.open(config.run_dir / "images" / f"{image_id}.png"), np.int16)
        uninterrupted = np.asarray(Image.open(reference.run_dir / "images" / f"{image_id}.png"), np.int16)
        assert np.abs(resumed - uninterrupted).max() <= 1, image_id
    assert sorted(p.name for p in (config.run_dir / "images").iterdir()) == sorted(f"{i}.png" for i in expected)
    assert_no_temp_files(config.run_dir)
