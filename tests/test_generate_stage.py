"""`zirelia generate` with the real critic on real faces: the renderer is a test double that returns the face
photos of tests/data (tests/generate_support.py: FLUX.1-dev with a trained LoRA cannot run here), everything else
is the real code: the dlib identity check against a reference made from the persona's photos, the retry rules,
the files, the gallery, resuming, the command line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, assert_no_temp_files, run_cli, write_config
from tests.critic_support import NAME
from tests.generate_support import PROMPTS, ScenePhotoRenderer, make_trained_run
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ConfigError, ZireliaError
from zirelia_local.common.files import read_jsonl
from zirelia_local.common.rundir import run_lock
from zirelia_local.critic.selection import chosen_lora_scale
from zirelia_local.generate import PromptSpec, generate_persona_images, read_prompts_file, run_generate
from zirelia_local.generate.api import with_overrides
from zirelia_local.generate.prompts import expand_items

GENERATE = """
[critic]
max_retries = 2
"""


@pytest.fixture
def trained(tmp_path):
    """A config (batch size 2, count 2 per prompt) and its run directory with identity and best.safetensors."""
    config = load_config(write_config(tmp_path, extra=GENERATE + "[generate]\ncount = 2\n"))
    make_trained_run(config.run_dir)
    return config


def records_by_item(out):
    by_item = {}
    for record in read_jsonl(out / "results.jsonl"):
        by_item.setdefault(record["scene"], {}).setdefault(record["item"], []).append(record)
    return by_item


@pytest.mark.slow
def test_persona_accepted_other_person_rejected_and_retried_with_the_right_adjustment(trained):
    renderer = ScenePhotoRenderer()
    result = run_generate(trained, PROMPTS, renderer=renderer)
    out = result.out_dir
    assert out.parent == trained.run_dir / "generated" and out.name.startswith("reading-in-a-cafe-and-2-more-")
    by_scene = records_by_item(out)

    # The persona's photos: accepted on the first try, written as PNGs that document themselves.
    cafe = by_scene["reading in a cafe"]
    assert len(cafe) == 2 and all(len(attempts) == 1 and attempts[0]["accepted"] for attempts in cafe.values())
    for image in result.accepted[:2]:
        assert image.prompt == "reading in a cafe" and image.identity_judged and image.attempt == 0
        assert image.drawn_prompt == f"{NAME}, a photo of a 30-year-old man, reading in a cafe"
        with Image.open(image.path) as png:
            text = png.text
        assert text["prompt"] == image.drawn_prompt and text["seed"] == str(image.seed) and text["scale"] == "1"
        assert text["verdict"] == "accepted" and json.loads(text["scores"])["identity_distance"] < 0.6

    # Another person: rejected as not the persona, retried with the stronger trigger and a raised LoRA scale;
    # the retry draws the persona and is accepted.
    for attempts in by_scene["talking to a stranger in the street"].values():
        first, retry = attempts
        assert first["failures"] == ["identity_weak"] and "not the persona" in " ".join(first["reasons"])
        assert first["image"] is None  # rejected images are not kept unless asked
        assert retry["attempt"] == 1 and retry["accepted"] and retry["lora_scale"] == 1.15
        assert retry["adjusted_prompt"].startswith(f"{NAME}, a photo of {NAME}, a 30-year-old man")
        assert "not the persona's face: stronger trigger phrasing (trigger word repeated)" in retry["adjustments"]
        assert "not the persona's face: LoRA scale 1 -> 1.15" in retry["adjustments"]
        assert retry["attempt_seed"] != first["attempt_seed"]
    assert (1.15 in {scale for _, _, scale in renderer.calls}) and (out / retry["image"]).is_file()

    # Never the persona: rejected after max_retries (2) retries, the scale raised each time.
    for attempts in by_scene["an impostor at the door"].values():
        assert [record["attempt"] for record in attempts] == [0, 1, 2]
        assert [record["lora_scale"] for record in attempts] == [1.0, 1.15, 1.3]
        assert not any(record["accepted"] for record in attempts)
        assert attempts[-1]["outcome"] == "rejected after 2 retries"

    assert len(result.accepted) == 4 and result.requested == 6 and result.exit_code == 1
    assert result.failure_lines == ["not the persona's face: 2 of 6 images still rejected after 2 retries each"]
    assert result.drawn == renderer.drawn == 2 + 4 + 6 and result.finished == 6
    assert sorted(path.name for path in out.glob("*.png")) == sorted(image.path.name for image in result.accepted)
    assert not (out / "rejected").exists()

    # The gallery: accepted first, then the failures with their reasons and the retries' adjustments.
    page = result.gallery.read_text()
    assert page.index('id="accepted"') < page.index('id="rejected"')
    assert "<b>4 of 6</b> requested images accepted" in page and "not the persona" in page
    assert "stronger trigger phrasing" in page and "Hands are not judged" in page
    assert "<script" not in page and "https://" not in page
    assert_no_temp_files(out)

    # The same request again: everything is done, nothing is drawn, the same images are returned.
    again = ScenePhotoRenderer()
    images = generate_persona_images(trained, PROMPTS, renderer=again)
    assert again.calls == [] and [image.path for image in images] == [image.path for image in result.accepted]


def test_rerun_draws_only_what_a_bigger_request_adds(trained):
    first = run_generate(trained, PROMPTS[:1], renderer=ScenePhotoRenderer())
    more = ScenePhotoRenderer()
    result = run_generate(with_overrides(trained, count=3), PROMPTS[:1], renderer=more)
    assert result.out_dir == first.out_dir and more.drawn == 1 and len(result.accepted) == 3

    # More retries for an impostor: a rerun goes on from the last retry instead of starting over.
    impostor = with_overrides(trained, count=1, max_retries=1)
    done = run_generate(impostor, PROMPTS[2:], renderer=ScenePhotoRenderer())
    assert done.attempts == 2
    extended = ScenePhotoRenderer()
    result = run_generate(with_overrides(impostor, max_retries=3), PROMPTS[2:], renderer=extended)
    assert result.out_dir == done.out_dir and extended.drawn == 2 and result.attempts == 4
    assert [scale for _, _, scale in extended.calls] == [1.3, 1.45]
    outcomes = [record["outcome"] for record in read_jsonl(result.results_file)]
    assert outcomes == ["retry 1 of 3", "retry 2 of 3", "retry 3 of 3", "rejected after 3 retries"]


@pytest.mark.slow
def test_a_lost_record_or_image_is_drawn_again_and_nothing_else(trained):
    config = with_overrides(trained, keep_rejected=True)
    result = run_generate(config, PROMPTS, renderer=ScenePhotoRenderer())
    out = result.out_dir
    assert len(list((out / "rejected").glob("*.png"))) == 2 + 6  # the strangers' first tries, the impostors'
    # A kill between an image and its record: the image stays, the record is lost.
    stranger_retry = next(out.glob("attempts/talking-to-a-stranger*_a1.json"))
    stranger_retry.unlink()
    # An accepted image changed on disk after its record was written.
    cafe = result.accepted[0].path
    cafe.write_bytes(b"not the image that was judged")
    renderer = ScenePhotoRenderer()
    again = run_generate(config, PROMPTS, renderer=renderer)
    assert renderer.drawn == 2
    assert sorted(len(prompts) for prompts, _, _ in renderer.calls) == [1, 1]
    assert {image.path for image in again.accepted} == {image.path for image in result.accepted}
    with Image.open(cafe) as png:
        assert png.text["verdict"] == "accepted"
    keys = [(record["item"], record["attempt"]) for record in read_jsonl(out / "results.jsonl")]
    assert len(keys) == len(set(keys)) == result.attempts


def test_scale_comes_from_the_critic_unless_given(trained):
    run_dir = trained.run_dir
    (run_dir / "critic").mkdir()
    (run_dir / "critic" / "selection.json").write_text(json.dumps({"epoch": 1, "lora_scale": 1.15}))
    renderer = ScenePhotoRenderer()
    result = run_generate(trained, PROMPTS[:1], renderer=renderer)
    assert {scale for _, _, scale in renderer.calls} == {1.15}
    assert "chosen by the critic for epoch 1" in result.gallery.read_text()

    given = ScenePhotoRenderer()
    run_generate(with_overrides(trained, lora_scale=0.8), PROMPTS[:1], renderer=given)
    assert {scale for _, _, scale in given.calls} == {0.8}
    # Another LoRA file: the critic's choice was for best.safetensors, so the [critic] lora_scale applies.
    other = Path(shutil.copy(run_dir / "best.safetensors", run_dir / "other.safetensors"))
    elsewhere = ScenePhotoRenderer()
    run_generate(with_overrides(trained, lora=other), PROMPTS[:1], renderer=elsewhere)
    assert {scale for _, _, scale in elsewhere.calls} == {1.0} and elsewhere.loaded == [other]


def test_chosen_lora_scale_is_the_one_most_accepted_images_needed():
    records = [
        {"accepted": True, "lora_scale": 1.15},
        {"accepted": True, "lora_scale": 1.15},
        {"accepted": True, "lora_scale": 1.0},
        {"accepted": False, "lora_scale": 1.0},
    ]
    assert chosen_lora_scale(records, 1.0)[0] == 1.15
    assert chosen_lora_scale(records[2:], 1.0) == (1.0, "1 of 1 accepted images were drawn at the evaluation scale 1")
    assert chosen_lora_scale(records[3:], 1.0)[0] == 1.0


def test_identity_unknown_generates_anyway_and_says_so(tmp_path):
    config = load_config(write_config(tmp_path, extra='[curate]\nmode = "record"\n'))
    make_trained_run(config.run_dir)
    (config.run_dir / "identity.safetensors").unlink()
    result = run_generate(config, PROMPTS[2:], renderer=ScenePhotoRenderer())
    (image,) = result.accepted  # the impostor: nothing to compare the face with, every other check passed
    assert not image.identity_judged and image.record["verdict"] == "accepted (identity not judged)"
    assert result.exit_code == 0
    assert "Identity is not judged: the run has no identity.safetensors" in result.gallery.read_text()


def test_settings_of_a_folder_are_not_mixed(trained, tmp_path):
    out = tmp_path / "mine"
    run_generate(trained, PROMPTS[:1], out=out, renderer=ScenePhotoRenderer())
    with pytest.raises(ZireliaError, match=r"other settings \(changed: lora_scale\)"):
        run_generate(with_overrides(trained, lora_scale=1.2), PROMPTS[:1], out=out, renderer=ScenePhotoRenderer())


def test_prompts_files_and_seeds(tmp_path):
    text = tmp_path / "posts.txt"
    text.write_text("# this week\nreading in a cafe\n\n  on a beach at sunset  \n")
    assert read_prompts_file(text) == [PromptSpec("reading in a cafe"), PromptSpec("on a beach at sunset")]
    lines = tmp_path / "posts.jsonl"
    lines.write_text('{"prompt": "in a cafe", "seed": 7, "count": 3, "name": "cafe"}\n{"prompt": "at home"}\n')
    specs = read_prompts_file(lines)
    items, repeats = expand_items(specs, count=2, seed=None)
    assert [item.key for item in items[:3]] == ["cafe_s7", "cafe_s8", "cafe_s9"] and repeats == 0
    home = [item for item in items if item.scene == "at home"]
    assert len(home) == 2 and home[1].seed == home[0].seed + 1 and home[0].name.startswith("at-home-")
    # The same prompts give the same seeds on every run (that is what a rerun resumes by).
    assert expand_items(specs, count=2, seed=None) == (items, 0)
    assert [item.seed for item in expand_items(specs[1:], count=2, seed=100)[0]] == [100, 101]
    assert expand_items([PromptSpec("x", seed=5), PromptSpec("x", seed=5)], count=1, seed=None)[1] == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x", "colour": "red"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: unknown key\(s\) \['colour'\]"):
        read_prompts_file(bad)
    bad.write_text('{"prompt": "x", "count": 0}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: `count` must be"):
        read_prompts_file(bad)


def test_no_trained_run_names_what_is_missing_and_the_command(tmp_path):
    config = load_config(write_config(tmp_path))
    with pytest.raises(ZireliaError) as raised:
        run_generate(config, ["in a cafe"], renderer=ScenePhotoRenderer())
    message = str(raised.value)
    assert "best.safetensors is missing" in message and "identity.safetensors is missing" in message
    assert "python -m zirelia_local.train CONFIG" in message

    result = run_cli(["-m", "zirelia_local", "generate", str(config.source), "--prompt", "in a cafe"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "best.safetensors is missing" in result.stderr


@pytest.mark.slow
def test_invalid_arguments_exit_2(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "folder").mkdir()
    for args, expected in (
        (["--prompt", "x", "--count", "0"], "--count 0: Input should be greater than or equal to 1"),
        (["--prompt", "x", "--scale", "3"], "--scale 3.0: Input should be less than or equal to 2"),
        (["--prompts", str(tmp_path / "none.txt")], f"--prompts {tmp_path}/none.txt does not exist"),
        (["--prompts", str(tmp_path / "folder")], f"--prompts {tmp_path}/folder is a folder, not a file"),
        (["--prompt", "x", "--lora", str(tmp_path / "folder")], f"--lora {tmp_path}/folder is a folder, not a file"),
        (["--prompt", "x", "--out", str(tmp_path / "a_file")], f"--out {tmp_path}/a_file is a file, not a folder"),
        (["--prompt", "x", "--out", "/proc/1/out"], "cannot use --out /proc/1/out"),
        ([], "no prompt to draw"),
    ):
        result = run_cli(["-m", "zirelia_local", "generate", str(config), *args])
        assert result.returncode == 2, (args, result.stderr)
        assert expected in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_batch_then_rerun(tmp_path):
    """A real process killed with SIGKILL while it draws; the rerun finishes with the same accepted images as an
    uninterrupted run (byte for byte), no duplicates, no temp files, and draws only what had no record."""
    runs = {}
    for name in ("killed", "clean"):
        config = load_config(write_config(tmp_path / name, extra=GENERATE + "[generate]\ncount = 2\n"))
        make_trained_run(config.run_dir)
        runs[name] = config
    command = [sys.executable, "-m", "tests.generate_support", str(runs["killed"].source), "--delay", "0.6"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    attempts = runs["killed"].run_dir / "generated"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(attempts.glob("*/attempts/*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = len(list(attempts.glob("*/attempts/*.json")))
    assert 3 <= recorded < 12, "the kill should land in the middle of the request"

    # The rerun (after a kill: the lock is free, temp files are swept) and an uninterrupted run, in this process.
    renderers = {name: ScenePhotoRenderer() for name in runs}
    results = {}
    for name, config in runs.items():
        with run_lock(config.run_dir):
            results[name] = run_generate(config, PROMPTS, renderer=renderers[name])
    assert renderers["killed"].drawn == 12 - recorded  # 2 + 4 + 6 = 12 attempts in all: none is drawn twice
    assert renderers["clean"].drawn == 12

    def outcome(result):
        out = result.out_dir
        records = list(read_jsonl(out / "results.jsonl"))
        keys = [(record["item"], record["attempt"]) for record in records]
        assert len(keys) == len(set(keys)), "duplicate attempts"
        accepted = sorted(record["image"] for record in records if record["accepted"])
        assert sorted(path.name for path in out.glob("*.png")) == accepted
        assert_no_temp_files(out)
        return accepted, sorted(keys), [image.path.read_bytes() for image in result.accepted]

    assert outcome(results["killed"]) == outcome(results["clean"])
