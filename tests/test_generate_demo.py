"""`zirelia generate` end to end on the demo's trained run: the real tiny FLUX pipeline with the LoRA the demo
trained (diffusers backend), the real critic, the real command line. The tiny random model draws no face, so every
image is rejected ("no face found") after its retries, and the command says so and exits 1."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, assert_no_temp_files, run_cli
from zirelia_local.common.config import load_config
from zirelia_local.common.files import read_jsonl

sys.path.insert(0, str(REPO / "scripts"))
from screenshot_report import find_chromium, screenshot

DEMO = REPO / "configs" / "demo.toml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_flux_dir):
    """The demo's whole job (`python -m zirelia_local.train configs/demo.toml`), run once for this module."""
    from zirelia_local.common.rundir import run_lock
    from zirelia_local.pipeline import run_pipeline

    config = load_config(DEMO, run_dir=tmp_path_factory.mktemp("demo") / "run")
    with run_lock(config.run_dir):
        run_pipeline(config)
    assert (config.run_dir / "best.safetensors").is_file()
    return config.run_dir


def generate(run_dir, *args):
    command = ["-m", "zirelia_local", "generate", str(DEMO), "--run-dir", str(run_dir), *args]
    return run_cli(command, timeout=600)


@pytest.mark.slow
def test_demo_generate_rejects_every_image_honestly_and_a_rerun_draws_nothing(demo_run, tmp_path):
    result = generate(demo_run, "--prompt", "reading in a cafe", "--count", "2")
    assert result.returncode == 1, result.stderr[-4000:]
    said = " ".join(result.stderr.split())
    assert "generate: 0 of 2 images accepted" in said
    assert "no face found: 2 of 2 images still rejected after 1 retry each" in said
    assert "at scale 1 (chosen by the critic for epoch 2, critic/selection.json)" in said

    (out,) = (demo_run / "generated").iterdir()
    records = list(read_jsonl(out / "results.jsonl"))
    assert len(records) == 4  # 2 images x (first try + [critic] max_retries = 1 retry)
    for record in records:
        assert record["attempt"] <= 1 and record["verdict"] == "rejected: no face found"
        assert record["scene"] == "reading in a cafe" and record["lora"] == "best.safetensors"
        assert record["prompt"] == "siennafox23, a photo of a 23-year-old woman, reading in a cafe"
    retries = [record for record in records if record["attempt"] == 1]
    assert all("close-up portrait, face clearly visible" in record["adjusted_prompt"] for record in retries)
    assert not list(out.glob("*.png"))  # nothing accepted, rejected images not kept
    page = (out / "index.html").read_text()
    assert "<b>0 of 2</b> requested images accepted" in page and "No image was accepted." in page
    assert "Identity is not judged: the run has no identity.safetensors" in page
    assert page.count('src="data:image/png;base64,') == 4  # every attempt shown from its thumbnail
    assert "<script" not in page and "https://" not in page
    assert_no_temp_files(demo_run)

    # The same command again: nothing is drawn, the records are untouched.
    stamps = {path: path.stat().st_mtime_ns for path in (out / "attempts").iterdir()}
    again = generate(demo_run, "--prompt", "reading in a cafe", "--count", "2")
    assert again.returncode == 1 and "nothing left to draw" in " ".join(again.stderr.split())
    assert {path: path.stat().st_mtime_ns for path in (out / "attempts").iterdir()} == stamps
    assert list(read_jsonl(out / "results.jsonl")) == records

    if find_chromium() is not None:  # the gallery renders: text, red frames round the rejected images
        shot = screenshot(out / "index.html", tmp_path / "gallery.png", width=1200, height=1600)
        with Image.open(shot) as image:
            pixels = np.asarray(image.convert("RGB"), np.float32)
        assert pixels.std() > 20
        red = (pixels[..., 0] > 170) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
        assert red.sum() > 2000


@pytest.mark.slow
def test_two_processes_draw_and_record_what_one_process_does(demo_run, tmp_path):
    # `zirelia generate --num-processes 2` (accelerate launch, two CPU processes on gloo) against one process,
    # one thread each (torch's CPU results depend on the thread count). One image per batch, so the four
    # images split two and two.
    config = tmp_path / "demo.toml"
    config.write_text(DEMO.read_text().replace("batch_size = 4", "batch_size = 1"))
    request = ["--prompt", "reading in a cafe", "--prompt", "walking a dog", "--count", "2", "--keep-rejected"]

    def generate_into(out, *extra):
        command = ["-m", "zirelia_local", "generate", str(config), "--run-dir", str(demo_run), "--out", str(out)]
        return run_cli([*command, *request, *extra], env={"OMP_NUM_THREADS": "1", "COLUMNS": "250"}, timeout=900)

    one, two = tmp_path / "one", tmp_path / "two"
    single = generate_into(one)
    assert single.returncode == 1, single.stderr[-3000:]
    launched = generate_into(two, "--num-processes", "2")
    # Exit 1 as one process's (no face on the tiny model: every image rejected), through the launcher.
    assert launched.returncode == 1, launched.stdout[-3000:] + launched.stderr[-3000:]
    said = " ".join(launched.stderr.split())
    # Each process exits 0 once the request is finished, so torchrun reports no crash; the shortcut exits 1.
    assert "Traceback" not in said and "ChildFailedError" not in said, said[-3000:]
    assert "launching 2 processes" in said and "split across 2 processes" in said
    assert said.count("generate: 0 of 4 images accepted") == 1  # the summary once, from the main process

    def files(folder):
        return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.png"))}

    # The same attempts (4 images x 2 tries), byte for byte, and the same records in the same order.
    assert len(files(one)) == 8 and files(one) == files(two)
    records = [list(read_jsonl(out / "results.jsonl")) for out in (one, two)]
    assert len(records[0]) == 8 and records[0] == records[1]
    assert sorted(path.name for path in (two / "attempts").iterdir()) == sorted(
        path.name for path in (one / "attempts").iterdir()
    )
    assert (two / "index.html").is_file() and (one / "generate.json").read_bytes() == (
        two / "generate.json"
    ).read_bytes()
    assert_no_temp_files(two)

    # A rerun on two processes finds every image done and draws nothing.
    again = generate_into(two, "--num-processes", "2")
    assert again.returncode == 1 and "nothing left to draw" in " ".join(again.stderr.split())
    assert list(read_jsonl(two / "results.jsonl")) == records[1]
