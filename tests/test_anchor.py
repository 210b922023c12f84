"""The identity-anchored dataset ([dataset] identity = "anchor") on real parts: the tiny random but real
FluxKontextPipeline (builtin:tiny-flux-kontext), the dlib embedder and the public-domain photos of tests/data.

The tiny models are random, so they draw no face: these tests pin what the code does with the anchor (it is
the pipeline's conditioning input, it is checked, copied, reused, recorded and used as curation's reference),
not how good a real Kontext's images are."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, REPO, assert_no_temp_files, run_cli, write_config
from tests.photos import noise, photo, side_by_side, small_face
from zirelia_local.common.config import GeneratorConfig, load_config
from zirelia_local.common.errors import ConfigError, ZireliaError
from zirelia_local.common.files import sha256_file
from zirelia_local.common.manifest import Manifest
from zirelia_local.dataset import plan_images, render_batch, run_dataset


def anchored_config(tmp_path: Path, *, count: int = 4, batch_size: int = 2, dataset: str = "", extra: str = ""):
    """The shared test config made identity-anchored (the tiny Kontext draws, the tiny FLUX draws anchors)."""
    path = write_config(tmp_path, count=count, batch_size=batch_size)
    text = path.read_text()
    text = text.replace("[dataset]\n", '[dataset]\nidentity = "anchor"\n' + textwrap.dedent(dataset), 1)
    text = text.replace(
        'model = "builtin:tiny-flux"\n', 'model = "builtin:tiny-flux"\nkontext_model = "builtin:tiny-flux-kontext"\n'
    )
    path.write_text(text + textwrap.dedent(extra))
    return load_config(path)


@pytest.fixture(scope="module")
def kontext_pipe():
    from zirelia_local.dataset.flux import load_kontext_pipeline

    return load_kontext_pipeline(GeneratorConfig(kontext_model="builtin:tiny-flux-kontext", device="cpu"))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.int16)


def test_tiny_kontext_draws_the_plan_from_the_anchor(tmp_path, kontext_pipe):
    config = anchored_config(tmp_path, count=6)
    entries = plan_images(config.persona, config.dataset)
    # Prompts follow the plan: the instruction template filled with each entry's axes and the description.
    for entry in entries:
        assert entry.prompt == config.dataset.instruction_template.format(
            description=config.persona.description, **entry.axes
        )
        assert entry.prompt.startswith("Show this same person") and entry.axes["setting"] in entry.prompt
    # Every image has its own seed (no shared fixed seed: the anchor is the shared start).
    assert len({entry.seed for entry in entries}) == len(entries)
    assert not any(entry.fixed_seed for entry in entries)

    prompts, seeds = [e.prompt for e in entries[:3]], [e.seed for e in entries[:3]]
    obama = photo("obama").resize((64, 64))
    first = render_batch(kontext_pipe, prompts, seeds, config, anchor=obama)
    again = render_batch(kontext_pipe, prompts, seeds, config, anchor=obama)
    other = render_batch(kontext_pipe, prompts, seeds, config, anchor=photo("biden").resize((64, 64)))
    assert [image.size for image in first] == [(64, 64)] * 3
    for a, b, c in zip(first, again, other, strict=True):
        assert np.array_equal(_pixels(a), _pixels(b))  # same anchor, prompt and seed: the same image
        # Another anchor, nothing else changed: another image. The random tiny transformer weighs the anchor's
        # tokens lightly, so the change is small, but it is there in every image and absent above.
        assert np.abs(_pixels(a) - _pixels(c)).sum() > 200
    # The instruction is read too: the same seed and anchor with another prompt is another image.
    swapped = render_batch(kontext_pipe, [prompts[1]], [seeds[0]], config, anchor=obama)[0]
    assert not np.array_equal(_pixels(swapped), _pixels(first[0]))


def test_anchor_photo_is_checked_copied_recorded_and_judged_by(tmp_path):
    from zirelia_local.curate import run_curate
    from zirelia_local.faces.dlib_embedder import DlibEmbedder
    from zirelia_local.faces.identity import load_identity
    from zirelia_local.report import write_report

    config = anchored_config(
        tmp_path,
        count=3,
        batch_size=3,
        dataset=f'anchor_image = "{DATA / "obama.jpg"}"\n',
        extra='[curate]\nmode = "record"\n',
    )
    config.dataset.resolution = 192  # the 155 px face of the photo is ~86 px once cropped to 192
    embedder = DlibEmbedder()
    result = run_dataset(config, embedder=embedder)
    run_dir = config.run_dir

    info = json.loads((run_dir / "anchor.json").read_text())
    assert info["source"] == "photo" and info["photo"] == str((DATA / "obama.jpg").resolve())
    assert (run_dir / info["copy"]).read_bytes() == (DATA / "obama.jpg").read_bytes()  # copied as given
    assert info["photo_check"]["verdict"] == "ok" and info["photo_check"]["face"]["size"] == 155
    assert info["check"]["verdict"] == "ok" and info["check"]["faces"] == 1
    with Image.open(run_dir / "anchor.png") as anchor:
        assert anchor.size == (192, 192)
    assert result.anchor is not None and result.anchor.sha256 == sha256_file(run_dir / "anchor.png")

    rows = list(Manifest(run_dir))
    assert len(rows) == 3
    for row in rows:
        assert row["method"] == "anchor" and row["model"] == "builtin:tiny-flux-kontext"
        assert row["anchor"] == {"file": "anchor.png", "sha256": result.anchor.sha256, "source": "photo"}
        assert row["guidance"] == config.generator.kontext_guidance
        with Image.open(run_dir / row["file"]) as image:
            assert image.size == (192, 192) and image.text["prompt"] == row["prompt"]

    # Curation judges by the anchor's face: the identity is that person (another photo of him is within the
    # same-person distance, another man is not), and the summary says where it came from.
    curation = run_curate(config, embedder=embedder)
    assert curation.identity is not None and curation.identity.source == "anchor"
    saved = load_identity(run_dir, embedder="dlib")
    assert saved.source == "anchor"
    assert embedder.distance(saved.embedding, embedder.detect(photo("obama2"))[0].embedding) < 0.6
    assert embedder.distance(saved.embedding, embedder.detect(photo("biden"))[0].embedding) > 0.6
    summary = json.loads((run_dir / "curation.json").read_text())
    assert summary["identity"]["source"] == "anchor"
    assert summary["cohesion"]["images"] == 3 and summary["cohesion"]["top_up_rounds"] == 0

    # [curate] reference_images, when set, wins over the anchor.
    config.curate.reference_images = [DATA / "biden.jpg"]
    assert run_curate(config, embedder=embedder).identity.source == "reference_images"

    page = write_report(config).read_text()
    assert "Anchor portrait" in page and "your photo" in page and "Identity cohesion" in page
    assert "mean pairwise face distance" in page and "share in the largest identity cluster" in page

    # A second dataset run reuses the anchor and redraws nothing.
    again = run_dataset(config, embedder=embedder)
    assert again.generation.generated == [] and again.anchor.sha256 == result.anchor.sha256
    assert_no_temp_files(run_dir)


@pytest.mark.slow
def test_top_up_rounds_draw_with_kontext_from_the_same_anchor(tmp_path):
    from zirelia_local.curate import run_curate

    # Enforce mode on a random model: no image shows a face, so curation tops up (with Kontext, from the
    # photo's anchor) and then stops with the numbers.
    config = anchored_config(
        tmp_path,
        count=1,
        batch_size=5,
        dataset=f'anchor_image = "{DATA / "obama.jpg"}"\n',
        extra="[curate]\nmin_face_size = 48\ntop_up_rounds = 1\n",
    )
    config.dataset.resolution = 128  # the photo's face is ~57 px there
    dataset = run_dataset(config)
    with pytest.raises(ZireliaError, match="after 1 top-up round"):
        run_curate(config, pipe=dataset.generation.pipe)
    rows = list(Manifest(config.run_dir))
    top_ups = [row for row in rows if row["round"] == 1]
    assert top_ups and all(row["status"] == "generated" for row in rows)
    assert {row["method"] for row in rows} == {"anchor"}
    assert {row["anchor"]["sha256"] for row in rows} == {dataset.anchor.sha256}
    assert all(row["prompt"].startswith("Show this same person") for row in top_ups)
    summary = json.loads((config.run_dir / "curation.json").read_text())
    assert summary["identity"]["source"] == "anchor" and summary["cohesion"]["top_up_rounds"] == 1
    assert summary["cohesion"]["target_reached"] is False


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: noise(256), "no face found"),
        (lambda: side_by_side("obama", "biden"), "2 faces found"),
        (lambda: small_face(photo("obama"), 40), "under [curate] min_face_size 64 px"),
    ],
    ids=["no-face", "two-faces", "face-too-small"],
)
def test_a_photo_without_one_clear_face_is_refused_before_anything_is_drawn(tmp_path, make, expected):
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    picture = tmp_path / "persona.png"
    make().save(picture)
    # Models that cannot be loaded here: had the stage loaded one before checking the photo, it would fail
    # with a loading error instead of the photo's.
    config = anchored_config(tmp_path / "cfg", dataset=f'anchor_image = "{picture}"\n')
    config.generator.model = config.generator.kontext_model = "nobody/not-a-model"
    with pytest.raises(ZireliaError) as caught:
        run_dataset(config, embedder=DlibEmbedder())
    assert expected in caught.value.message and str(picture) in caught.value.message
    assert "nothing was generated" in (caught.value.hint or "")
    run_dir = config.run_dir
    for name in ("images", "manifest.jsonl", "plan.jsonl", "anchor.png", "anchor.json"):
        assert not (run_dir / name).exists(), name


def test_refused_photo_through_the_cli_is_one_clear_message(tmp_path):
    picture = tmp_path / "pair.png"
    side_by_side("obama", "biden").save(picture)
    config = anchored_config(tmp_path / "cfg", dataset=f'anchor_image = "{picture}"\n')
    result = run_cli(["-m", "zirelia_local", "dataset", str(config.source)])
    assert result.returncode == 1, result.stderr[-2000:]
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert "2 faces found" in said and "nothing was generated" in said and "Traceback" not in said


@pytest.mark.slow
def test_drawn_anchor_is_the_best_candidate_reused_on_rerun_and_a_new_one_redraws_the_set(tmp_path):
    config = anchored_config(tmp_path, count=3, dataset="anchor_candidates = 3\n", extra='[curate]\nmode = "record"\n')
    first = run_dataset(config)
    run_dir = config.run_dir
    info = json.loads((run_dir / "anchor.json").read_text())
    assert info["source"] == "generated" and len(info["candidates"]) == 3
    assert info["candidates"][0]["seed"] == config.dataset.seed  # the base seed first
    assert len({item["seed"] for item in info["candidates"]}) == 3
    assert [item["chosen"] for item in info["candidates"]].count(True) == 1
    chosen = next(item for item in info["candidates"] if item["chosen"])
    # The tiny random model draws no face, so no candidate passes; the sharpest well-exposed one is kept.
    assert all(item["verdict"] == "no_face" for item in info["candidates"])
    assert chosen["sharpness"] == max(item["sharpness"] for item in info["candidates"])
    with Image.open(run_dir / chosen["file"]) as drawn, Image.open(run_dir / "anchor.png") as anchor:
        assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(anchor.convert("RGB")))
        assert drawn.text["seed"] == str(chosen["seed"])
    stamps = {path.name: path.stat().st_mtime_ns for path in (run_dir / "anchor").iterdir()}

    second = run_dataset(config)
    assert second.generation.generated == [] and second.anchor.sha256 == first.anchor.sha256
    assert {path.name: path.stat().st_mtime_ns for path in (run_dir / "anchor").iterdir()} == stamps

    # Another anchor prompt is another anchor: every image made from the old one is redrawn from the new one.
    config.dataset.anchor_prompt = "a studio portrait of {description}, facing the camera"
    third = run_dataset(config)
    assert third.anchor.sha256 != first.anchor.sha256
    assert sorted(third.generation.generated) == ["img_00000", "img_00001", "img_00002"]
    assert {row["anchor"]["sha256"] for row in Manifest(run_dir)} == {third.anchor.sha256}


def test_enforce_mode_refuses_drawn_candidates_without_a_face_before_kontext_loads(tmp_path):
    config = anchored_config(tmp_path, count=2, dataset="anchor_candidates = 2\n")
    config.generator.kontext_model = "nobody/not-a-model"  # never reached
    with pytest.raises(ZireliaError, match="none of the 2 anchor portrait"):
        run_dataset(config)
    assert not (config.run_dir / "manifest.jsonl").exists()


def test_anchor_config_keys(tmp_path):
    path = write_config(tmp_path, extra='\n[curate]\nmode = "record"\n')
    text = path.read_text().replace("[dataset]\n", f'[dataset]\nanchor_image = "{DATA / "obama.jpg"}"\n', 1)
    path.write_text(text)
    with pytest.raises(ConfigError, match='identity = "anchor"'):
        load_config(path)
    path.write_text(text.replace("[dataset]\n", '[dataset]\nidentity = "anchor"\ninstruction_template = "{mood}"\n', 1))
    with pytest.raises(ConfigError, match=r"instruction_template.*mood"):
        load_config(path)
    anchored = anchored_config(tmp_path / "ok", dataset=f'anchor_image = "{tmp_path / "missing.jpg"}"\n')
    with pytest.raises(ConfigError, match=r"anchor_image .*no such file"):
        run_dataset(anchored)


def test_kontext_loading_messages_name_the_kontext_key(tmp_path):
    script = textwrap.dedent(
        """
        from zirelia_local.common.config import GeneratorConfig
        from zirelia_local.common.errors import ZireliaError
        from zirelia_local.dataset.flux import load_kontext_pipeline
        try:
            load_kontext_pipeline(GeneratorConfig(device="cpu"))
        except ZireliaError as error:
            print("MESSAGE:", error)
        """
    )
    result = run_cli(["-c", script], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert "not in the local Hugging Face cache" in result.stdout, result.stderr
    assert "hf download black-forest-labs/FLUX.1-Kontext-dev" in result.stdout
    assert "[generator] kontext_model" in result.stdout


def test_doctor_has_a_kontext_row_for_anchored_runs(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from zirelia_local.doctor import collect_checks
    from zirelia_local.doctor.models import gpu_requirement, kontext_model_check

    def no_network(repo, token):
        raise AssertionError("the doctor must not ask the hub here")

    text_mode = load_config(write_config(tmp_path / "text"))
    assert "kontext model" not in [check.name for check in collect_checks(text_mode, access=no_network)]
    anchored = anchored_config(tmp_path / "anchored")
    rows = {check.name: check for check in collect_checks(anchored, stages=["dataset"], access=no_network)}
    assert rows["kontext model"].status == "ok" and "builtin:tiny-flux-kontext" in rows["kontext model"].detail
    assert "kontext model" not in [
        check.name for check in collect_checks(anchored, stages=["critic"], access=no_network)
    ]

    # The default, FLUX.1 Kontext [dev], is gated: without a token the row fails and says what to accept.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    gated = kontext_model_check(GeneratorConfig(), no_network)
    assert gated.status == "FAIL" and "no Hugging Face token" in gated.detail
    assert "FLUX.1-Kontext-dev" in gated.fix and "[generator] kontext_model" in gated.fix
    anchored.generator.kontext_model = "black-forest-labs/FLUX.1-Kontext-dev"
    assert "FLUX.1-Kontext-dev needs a CUDA GPU" in (gpu_requirement(anchored, ["dataset"]) or "")
    assert gpu_requirement(anchored, ["critic"]) is None  # the critic draws with the (built-in) generator


@pytest.mark.slow
def test_anchored_demo_runs_every_stage_and_its_report_shows_the_anchor_and_cohesion(tmp_path):
    run_dir = tmp_path / "demo-anchor"
    config = REPO / "configs" / "demo-anchor.toml"
    result = run_cli(["-m", "zirelia_local.train", str(config), "--run-dir", str(run_dir)], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "draws no face" in result.stderr  # says, like the text demo, that a random model draws no face
    page = (run_dir / "report" / "index.html").read_text()
    assert "Anchor portrait" in page and "drawn by builtin:tiny-flux" in page and "draws no face" in page
    assert "Identity cohesion" in page and "top-up rounds needed" in page
    summary = json.loads((run_dir / "curation.json").read_text())
    assert summary["cohesion"]["images"] == 8 and summary["cohesion"]["largest_cluster_share"] == 0.0
    assert {row["method"] for row in Manifest(run_dir)} == {"anchor"}
    assert (run_dir / "best.safetensors").is_file()
    assert_no_temp_files(run_dir)
