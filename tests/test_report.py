"""The HTML report: sections, embedded images, honesty about stages that did not run, and that it renders."""

from __future__ import annotations

import base64
import io
import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_cli, write_config
from tests.critic_support import PhotoRenderer, save_reference_identity, write_placeholder_loras
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.common.files import write_jsonl
from zirelia_local.common.rundir import prepare_run_dir
from zirelia_local.critic import run_critic
from zirelia_local.report.stage import write_report

CRITIC = """
[critic]
prompts = ["reading a book in a library", "on a beach at sunrise"]
seeds = [1001]
max_retries = 1
"""

sys.path.insert(0, str(REPO / "scripts"))
from screenshot_report import find_chromium  # noqa: E402


def embedded_images(page: str) -> list[Image.Image]:
    images = []
    for _kind, data in re.findall(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', page):
        images.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return images


def assert_self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "an external resource"
    assert "url(" not in page and "@import" not in page


@pytest.fixture
def finished_run(tmp_path):
    """A run with every stage's files: curation log and contact sheet, training metrics, critic results
    (drawn by real photos standing in for FLUX.1-dev, which cannot run here)."""
    config = load_config(write_config(tmp_path, extra=CRITIC))
    run_dir = prepare_run_dir(config)
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    save_reference_identity(run_dir, DlibEmbedder())
    write_placeholder_loras(run_dir / "train")
    run_critic(config, renderer=PhotoRenderer())
    sheet = Image.new("RGB", (320, 160), (30, 140, 60))
    sheet.paste(photo("obama").resize((120, 140)), (10, 10))
    sheet.save(run_dir / "contact_sheet.png")
    write_jsonl(
        run_dir / "curation.jsonl",
        [
            {"file": "images/img_00000.png", "kept": True, "reason": "same person", "distance": 0.31},
            {"file": "images/img_00001.png", "kept": True, "reason": "same person", "distance": 0.35},
            {"file": "images/img_00002.png", "kept": False, "reason": "no face found", "distance": None},
        ],
    )
    write_jsonl(
        run_dir / "train" / "metrics.jsonl",
        # as the trainers write it: step lines, plus event lines that are not steps
        [{"event": "cache", "latents_encoded": 3}]
        + [{"step": step, "epoch": 1 + step // 5, "loss": 0.5 / (1 + step)} for step in range(10)]
        + [{"epoch": 2, "event": "epoch", "file": "testpersona7.safetensors", "mean_loss": 0.06}],
    )
    (run_dir / "train" / "command.txt").write_text("accelerate launch flux_train_network.py --token HF_TOKEN=abc\n")
    return config


def test_report_of_a_finished_run_has_every_section(finished_run):
    config = finished_run
    path = write_report(config)
    assert path == config.run_dir / "report" / "index.html"
    page = path.read_text()
    assert_self_contained(page)
    for anchor in ("dataset", "training", "scores", "grids", "commands"):
        assert f"id='{anchor}'" in page
    # Dataset: the contact sheet and the curation decisions.
    contact = base64.b64encode((config.run_dir / "contact_sheet.png").read_bytes()).decode()
    assert contact in page
    # The frame is the identity verdict and the label the decision (record mode keeps red-framed images).
    assert "framed green when the image passes curation" in page and "says whether it was kept" in page
    assert "<b>2</b> kept, <b>1</b> rejected of 3 images" in page and "no face found" in page
    # Training and the per-epoch curves (also written beside the page).
    assert "10 logged steps, epochs 1..2; last loss 0.0500 at step 9" in page
    curves = config.run_dir / "report" / "curves.png"
    with Image.open(curves) as image:
        assert image.format == "PNG" and image.size == (1100, 700)
    assert base64.b64encode(curves.read_bytes()).decode() in page
    # Critic: the chosen epoch and why, every attempt with its scores, reasons and retry adjustments.
    assert "Chosen epoch: 2" in page and "highest mean identity similarity" in page
    assert "epoch 2 (chosen): 2/2 accepted" in page and "epoch 1: 0/2 accepted" in page
    assert "not the persona: dlib distance" in page
    assert "stronger trigger phrasing" in page and "LoRA scale 1 -&gt; 1.15" in page
    attempts = [json.loads(line) for line in (config.run_dir / "critic" / "scores.jsonl").read_text().splitlines()]
    images = embedded_images(page)
    assert len(images) == len(attempts) + 2  # every attempt's thumbnail, the contact sheet and the curves
    assert all(max(image.size) <= 1100 for image in images)
    # Commands and config: how to reproduce, the training command (tokens redacted), the config snapshot.
    assert "python -m zirelia_local.train" in page and "zirelia critic" in page
    assert "HF_TOKEN=***" in page and "HF_TOKEN=abc" not in page
    assert "[persona]" in page and "testpersona7" in page


def test_report_before_the_later_stages_says_what_has_not_run(tmp_path):
    config = load_config(write_config(tmp_path))
    prepare_run_dir(config)
    page = write_report(config).read_text()
    assert_self_contained(page)
    assert "The critic has not run yet" in page
    assert "Curation has not run" in page
    assert "No train/metrics.jsonl" in page
    assert "critic/scores.jsonl: the critic has not run" in page
    assert len(embedded_images(page)) == 1  # the (empty) curves figure


def test_cli_report_prints_where_the_report_is(finished_run):
    config = finished_run
    result = run_cli(["-m", "zirelia_local", "report", str(config.source)])
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stderr and "index.html" in result.stderr.replace("\n", "")


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    page = write_report(finished_run)
    shot = tmp_path / "shot.png"
    result = run_cli(["scripts/screenshot_report.py", str(page), str(shot), "--height", "1600"], timeout=180)
    assert result.returncode == 0, result.stderr
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels.std() > 20  # text, tables and images, not a blank page
    green = (pixels[..., 1] > 120) & (pixels[..., 0] < 80) & (pixels[..., 2] < 110)
    assert green.sum() > 500  # the accepted images' green frames and the summary box are drawn
