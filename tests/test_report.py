"""The HTML report: sections, embedded images, honesty about stages that did not run, escaping of user text,
the Jinja2 templates it is rendered from, and that it renders."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from datetime import UTC, datetime
from importlib import resources

import jinja2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_cli, write_config
from tests.critic_support import PhotoRenderer, save_reference_identity, write_placeholder_loras
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import read_jsonl, write_jsonl
from zirelia_local.common.rundir import prepare_run_dir
from zirelia_local.critic import run_critic
from zirelia_local.report import sections
from zirelia_local.report.render import environment, render_page
from zirelia_local.report.stage import build_report_html, write_report

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
    if not (run_dir / "manifest.jsonl").is_file():  # the report needs a run that at least started
        write_jsonl(run_dir / "manifest.jsonl", [{"id": "img_00000", "file": "images/img_00000.png"}])
    return config


def test_report_shows_the_live_identity_curve_the_early_stop_and_the_epochs_scored(finished_run):
    config = finished_run
    metrics = config.run_dir / "train" / "metrics.jsonl"
    live = [
        {"event": "identity", "epoch": 1, "identity": 0.412, "faces": 2, "images": 2, "defects": 0, "accepted": 0,
         "summary": "identity 0.412 (2/2 with a face, 0 with defects, 0 accepted)"},
        {"event": "identity", "epoch": 2, "identity": 0.688, "faces": 2, "images": 2, "defects": 0, "accepted": 2,
         "summary": "identity 0.688 (2/2 with a face, 0 with defects, 2 accepted)"},
        {"event": "early_stop", "epoch": 2, "epochs": 20, "best_epoch": 2, "rule": "patience",
         "reason": "the identity has not improved by more than 0.01 for 3 sampled epoch(s)"},
    ]  # fmt: skip
    write_jsonl(metrics, [*read_jsonl(metrics), *live])
    page = write_report(config).read_text()
    assert "Stopped early after epoch 2 of 20" in page and "has not improved by more than 0.01" in page
    assert "the sample images of 2 epoch(s), judged while training ran" in page
    assert "identity 0.688 (2/2 with a face, 0 with defects, 2 accepted)" in page
    # The critic's epoch search: which epochs it scored and what that cost (both of two saved epochs here).
    drawn = len(list(read_jsonl(config.run_dir / "critic" / "scores.jsonl")))
    assert "Epochs scored (search): <b>2 of 2</b> saved epochs" in page
    assert f"Cost: {drawn} evaluation images drawn (4 first tries)" in page
    assert "10 logged steps" in page  # event lines are not steps


def test_report_of_a_finished_run_has_every_section(finished_run):
    config = finished_run
    path = write_report(config)
    assert path == config.run_dir / "report" / "index.html"
    page = path.read_text()
    assert_self_contained(page)
    for anchor in ("dataset", "training", "scores", "grids", "commands"):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
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
    run_dir = prepare_run_dir(config)
    with pytest.raises(ZireliaError, match="nothing to report"):  # nothing at all: a wrong --run-dir, most likely
        write_report(config)
    write_jsonl(run_dir / "manifest.jsonl", [{"id": "img_00000", "file": "images/img_00000.png"}])
    page = write_report(config).read_text()
    assert_self_contained(page)
    assert "The critic has not run yet" in page
    assert "Curation has not run" in page
    assert "No train/metrics.jsonl" in page
    assert "critic/scores.jsonl: the critic has not run" in page
    assert len(embedded_images(page)) == 1  # the (empty) curves figure


HOSTILE = "<script>alert('x')</script>"


def hostile_run(tmp_path):
    """A run whose every user-written text holds markup: the persona, the curation log, a critic attempt (its
    prompt, scene, reasons, adjustments) and the selection. Written by hand, so no model has to run."""
    config = load_config(write_config(tmp_path))
    persona = config.persona.model_copy(
        update={"name": f"Eve {HOSTILE}", "description": 'likes <b>bold</b> & "quotes"'}
    )
    config = config.model_copy(update={"persona": persona})
    run_dir = prepare_run_dir(config)
    write_jsonl(run_dir / "manifest.jsonl", [{"id": "img_00000", "file": "images/img_00000.png"}])
    write_jsonl(run_dir / "curation.jsonl", [{"file": f"images/{HOSTILE}.png", "kept": False, "reason": HOSTILE}])
    (run_dir / "images").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(run_dir / "images" / "eval.png")
    attempt = {
        "epoch": 1,
        "item": "0",
        "attempt": 1,
        "image": "images/eval.png",
        "scene": f"scene {HOSTILE}",
        "seed": 7,
        "prompt": f"prompt {HOSTILE}",
        "adjusted_prompt": f"adjusted {HOSTILE}",
        "attempt_seed": 8,
        "lora_scale": 1.0,
        "lora": f"lora {HOSTILE}",
        "accepted": False,
        "verdict": "rejected",
        "reasons": [f"reason {HOSTILE}"],
        "adjustments": [f"change {HOSTILE}"],
        "outcome": f"outcome {HOSTILE}",
        "scores": {"faces": 0},
    }
    write_jsonl(run_dir / "critic" / "scores.jsonl", [attempt])
    row = {"epoch": 1, "faces": 0, "images": 1, "identity": None, "identity_with_face": None, "clip": None}
    selection = {
        "epoch": 1,
        "lora": f"lora {HOSTILE}",
        "basis": "fallback",
        "reason": f"why {HOSTILE}",
        "command": f"zirelia critic {HOSTILE}",
        "table": [{**row, "accepted_first_try": 0, "accepted": 0, "attempts": 2}],
        "identity": {"embedder": "dlib", "missing": HOSTILE},
        "clip": {"unavailable_reason": HOSTILE},
    }
    (run_dir / "critic" / "selection.json").write_text(json.dumps(selection))
    return config


def test_user_text_is_escaped_everywhere(tmp_path):
    config = hostile_run(tmp_path)
    page = write_report(config).read_text()
    assert_self_contained(page)  # among others: no "<script" anywhere, so every copy of HOSTILE was escaped
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    for text in ("Eve", "scene", "prompt", "reason", "change", "outcome", "why", "lora", "zirelia critic"):
        assert f"{text} {escaped}" in page, text
    assert f"<title>Eve {escaped}: zirelia-local report</title>" in page
    assert f'title="adjusted {escaped}"' in page  # in an attribute too: quotes cannot end it
    assert "likes &lt;b&gt;bold&lt;/b&gt; &amp; &#34;quotes&#34;" in page
    # The template's own markup is not escaped: the page is HTML, not text.
    assert "<b>Chosen epoch: 1</b>" in page
    assert "The critic could not confirm the persona in any image" in page


def test_the_page_is_deterministic(finished_run):
    config = finished_run
    now = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)
    first, curves = build_report_html(config, config.run_dir / "report", now=now)
    second, again = build_report_html(config, config.run_dir / "report", now=now)
    assert first == second and curves == again
    assert "written 2025-01-02 03:04 UTC" in first


def test_the_templates_ship_with_the_package_and_are_one_file():
    folder = resources.files("zirelia_local.report") / "templates"
    names = {entry.name for entry in folder.iterdir()}
    assert {"base.html.j2", "report.html.j2", "style.css"} <= names
    assert {"base.html.j2", "report.html.j2", "style.css"} <= set(environment().list_templates())
    # A later page (the `zirelia generate` gallery) extends the same base: one stylesheet, inlined verbatim
    # (so no Jinja syntax in the CSS was taken as a tag), and the same escaping.
    gallery = environment().from_string(
        '{% extends "base.html.j2" %}{% block title %}{{ name }}{% endblock %}'
        "{% block content %}<p>{{ name }}</p>{% endblock %}"
    )
    page = gallery.render(name=HOSTILE)
    assert (folder / "style.css").read_text(encoding="utf-8") in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert_self_contained(page)
    # A value the template needs and the context lacks is an error, not a silently empty section.
    with pytest.raises(jinja2.UndefinedError):
        render_page("report.html.j2", persona={"name": "x"})


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


def test_training_section_quotes_the_median_step_time():
    # As the trainers write metrics.jsonl: event lines, and step lines with each step's own duration.
    metrics = [
        {"event": "cache", "latents_encoded": 3},
        {"step": 1, "epoch": 1, "loss": 0.9, "step_seconds": 9.0},  # the first step: warm-up
        {"step": 2, "epoch": 1, "loss": 0.8, "step_seconds": 1.0, "avg_step_seconds": 5.0},
        {"step": 3, "epoch": 2, "loss": 0.7, "step_seconds": 2.0, "avg_step_seconds": 4.0},
        {"step": 4, "epoch": 2, "loss": 0.6, "step_seconds": 3.0, "avg_step_seconds": 3.75},
    ]
    section = sections.training(metrics)
    assert section["step_time"] == "2.00 s/step (median)"  # steps 2..4, not sd-scripts' running average
    assert sections.training([{"step": 1, "loss": 0.5}])["step_time"] is None  # a run from before step_seconds
