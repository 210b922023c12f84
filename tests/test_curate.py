"""Curation on real photos with the real dlib embedder, and top-up rounds on the tiny real FLUX pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import DATA, REPO, run_cli, write_config
from tests.photos import noise, photo, side_by_side
from zirelia_local.common.config import load_config
from zirelia_local.common.contact_sheet import OK_COLOUR, REJECTED_COLOUR, SheetItem, contact_sheet
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import read_jsonl, write_jsonl
from zirelia_local.common.manifest import Manifest
from zirelia_local.curate import run_curate
from zirelia_local.curate.outputs import CONTACT_SHEET, CURATION_LOG, CURATION_SUMMARY
from zirelia_local.curate.scan import FACE_CACHE
from zirelia_local.curate.topup import top_up_count
from zirelia_local.curate.verdicts import choose_cluster
from zirelia_local.dataset.generation import generate_images, image_record
from zirelia_local.dataset.plan import PLAN_NAME, plan_images
from zirelia_local.faces.identity import load_identity


@pytest.fixture(scope="module")
def embedder():
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    return DlibEmbedder()


def make_folder(folder: Path, images: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(folder / name)
    return folder


def log_by_source(run_dir: Path) -> dict[str, dict]:
    return {Path(line["source"]).name: line for line in read_jsonl(run_dir / CURATION_LOG)}


def test_mixed_folder_keeps_the_majority_identity_and_rejects_each_bad_image(tmp_path, embedder):
    small = photo("obama2.jpg")
    folder = make_folder(
        tmp_path / "photos",
        {
            "a_obama.jpg": photo("obama.jpg"),
            "b_obama2.jpg": photo("obama2.jpg"),
            "c_obama3.png": photo("obama3.jpg"),
            "d_obama_mirrored.jpg": ImageOps.mirror(photo("obama.jpg")),
            "e_biden.jpg": photo("biden.jpg"),
            "f_noise.png": noise(256, seed=0),
            "g_two_people.jpg": side_by_side("obama3.jpg", "biden.jpg"),
            "h_small_face.jpg": small.resize((small.width * 2 // 5, small.height * 2 // 5)),  # face ~62 px
        },
    )
    (folder / "notes.txt").write_text("not an image")
    (folder / "z_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    config = load_config(
        write_config(tmp_path, extra="[curate]\nmin_face_size = 100\ntarget_count = 4\nmin_count = 4\n")
    )
    result = run_curate(config, images_dir=folder, embedder=embedder)
    run_dir = config.run_dir

    log = log_by_source(run_dir)
    assert sorted(log) == sorted(p.name for p in folder.iterdir() if p.suffix != ".txt")  # one line per image
    kept = sorted(name for name, line in log.items() if line["kept"])
    assert kept == ["a_obama.jpg", "b_obama2.jpg", "c_obama3.png", "d_obama_mirrored.jpg"]
    reasons = {name: line["reason"] for name, line in log.items()}
    assert reasons["e_biden.jpg"] == "wrong_identity"
    assert reasons["f_noise.png"] == "no_face"
    assert reasons["g_two_people.jpg"] == "multiple_faces"
    assert reasons["h_small_face.jpg"] == "face_too_small"
    assert reasons["z_broken.jpg"] == "unreadable"
    for name, line in log.items():
        assert {"file", "kept", "reason", "distance"} <= set(line)
        if name.startswith(("a_", "b_", "c_", "d_")):
            assert line["distance"] < 0.6 and line["faces"] == 1 and line["face_size"] >= 100
    assert log["e_biden.jpg"]["distance"] > 0.6
    assert log["f_noise.png"]["distance"] is None and log["f_noise.png"]["faces"] == 0
    assert log["g_two_people.jpg"]["faces"] == 2
    assert log["h_small_face.jpg"]["face_size"] < 100

    # the manifest mirrors every decision; train_data holds only the kept images, each with its caption
    manifest = Manifest(run_dir)
    assert len(manifest) == 8  # the unreadable file is not imported
    for record in manifest:
        line = next(line for line in log.values() if line["id"] == record["id"])
        assert record["curation"]["kept"] == line["kept"] and record["curation"]["reason"] == line["reason"]
        assert record["origin"] == "images_dir" and record["status"] == "generated"
    train = sorted(p.name for p in (run_dir / "train_data").iterdir())
    kept_ids = sorted(line["id"] for line in log.values() if line["kept"])
    assert [p for p in train if p.endswith(".txt")] == [f"{i}.txt" for i in kept_ids]
    assert len(train) == 8
    caption = (run_dir / "train_data" / f"{kept_ids[0]}.txt").read_text()
    assert caption.startswith("testpersona7, a photo of a 30-year-old man")

    identity = load_identity(run_dir, embedder="dlib")
    assert identity.source == "cluster" and identity.count == 4
    assert len(result.kept) == 4 and result.identity is not None
    summary = json.loads((run_dir / "curation.json").read_text())
    assert summary["ok"] is True and summary["counts"]["wrong_identity"] == 1

    sheet = Image.open(run_dir / CONTACT_SHEET).convert("RGB")
    assert sheet.width >= 8 * 160 and sheet.height >= 2 * 160  # 10 cells, 8 per row
    pixels = {tuple(p) for p in np.asarray(sheet).reshape(-1, 3)[::7]}
    assert OK_COLOUR in pixels and REJECTED_COLOUR in pixels


def test_reference_photos_anchor_the_identity_instead_of_the_majority(tmp_path, embedder):
    folder = make_folder(
        tmp_path / "photos",
        {
            "biden.jpg": photo("biden.jpg"),
            "biden_mirrored.jpg": ImageOps.mirror(photo("biden.jpg")),
            "biden_crop.jpg": photo("biden.jpg").crop((40, 30, 340, 330)),
            "obama2.jpg": photo("obama2.jpg"),
            "obama3.jpg": photo("obama3.jpg"),
        },
    )
    reference = DATA / "obama.jpg"
    config = load_config(
        write_config(tmp_path, extra=f'[curate]\nreference_images = ["{reference}"]\ntarget_count = 2\n')
    )
    run_curate(config, images_dir=folder, embedder=embedder)
    log = log_by_source(config.run_dir)
    assert sorted(name for name, line in log.items() if line["kept"]) == ["obama2.jpg", "obama3.jpg"]
    assert all(line["reason"] == "wrong_identity" for name, line in log.items() if name.startswith("biden"))
    identity = load_identity(config.run_dir)
    assert identity.source == "reference_images" and identity.count == 1


def test_reference_photo_without_a_face_is_a_clear_error(tmp_path, embedder):
    noise(256, seed=3).save(tmp_path / "me.png")
    folder = make_folder(tmp_path / "photos", {"obama.jpg": photo("obama.jpg")})
    config = load_config(write_config(tmp_path, extra=f'[curate]\nreference_images = ["{tmp_path / "me.png"}"]\n'))
    with pytest.raises(ZireliaError, match=r"reference photo .*me.png: no face"):
        run_curate(config, images_dir=folder, embedder=embedder)


def test_record_mode_scores_and_logs_every_image_but_drops_none(tmp_path, embedder):
    folder = make_folder(
        tmp_path / "photos",
        {"obama.jpg": photo("obama.jpg"), "obama2.jpg": photo("obama2.jpg"), "biden.jpg": photo("biden.jpg")}
        | {"noise.png": noise(256, seed=1)},
    )
    config = load_config(write_config(tmp_path, extra='[curate]\nmode = "record"\n'))
    result = run_curate(config, images_dir=folder, embedder=embedder)
    log = log_by_source(config.run_dir)
    assert all(line["kept"] and line["mode"] == "record" for line in log.values())
    assert {name: line["reason"] for name, line in log.items()} == {
        "obama.jpg": "ok",
        "obama2.jpg": "ok",
        "biden.jpg": "wrong_identity",
        "noise.png": "no_face",
    }
    assert log["biden.jpg"]["distance"] > 0.6 > log["obama2.jpg"]["distance"]
    assert len(result.kept) == 4 and len(result.passing) == 2
    assert len(list((config.run_dir / "train_data").glob("*.txt"))) == 4


def test_rerun_reuses_cached_faces(tmp_path, embedder):
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    class CountingEmbedder(DlibEmbedder):
        """The real dlib embedder, counting the images it is asked to look at."""

        seen = 0

        def detect_batch(self, images):
            CountingEmbedder.seen += len(images)
            return super().detect_batch(images)

    folder = make_folder(tmp_path / "photos", {"obama.jpg": photo("obama.jpg"), "obama3.jpg": photo("obama3.jpg")})
    config = load_config(write_config(tmp_path, extra="[curate]\ntarget_count = 2\n"))
    counting = CountingEmbedder()
    run_curate(config, images_dir=folder, embedder=counting)
    assert CountingEmbedder.seen == 2 and (config.run_dir / FACE_CACHE).is_file()
    photo("obama2.jpg").save(folder / "obama2.jpg")
    run_curate(config, images_dir=folder, embedder=counting)
    assert CountingEmbedder.seen == 3  # only the new photo was embedded
    assert len(list(read_jsonl(config.run_dir / CURATION_LOG))) == 3


def test_curate_cli_on_two_people_keeps_exactly_the_majority(tmp_path):
    folder = make_folder(
        tmp_path / "photos",
        {f"{name}": photo(name) for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")}
        | {"biden_mirrored.jpg": ImageOps.mirror(photo("biden.jpg"))},
    )
    config_path = write_config(tmp_path, extra="[curate]\nmin_count = 3\n")
    result = run_cli(["-m", "zirelia_local.cli", "curate", str(config_path), "--images", str(folder)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    log = log_by_source(tmp_path / "run")
    assert sorted(name for name, line in log.items() if line["kept"]) == ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    assert "fewer than the target" in result.stderr  # 3 kept of the 6 the config's dataset.count asks for


def test_curate_cli_on_noise_stops_with_the_numbers_not_a_traceback(tmp_path):
    folder = make_folder(tmp_path / "noise", {f"noise{i}.png": noise(160, seed=10 + i) for i in range(3)})
    config_path = write_config(tmp_path)
    result = run_cli(["-m", "zirelia_local.cli", "curate", str(config_path), "--images", str(folder)], cwd=REPO)
    assert result.returncode == 1
    text = " ".join(result.stderr.split())  # rich wraps long lines
    assert "Traceback" not in text
    assert "error: curation of" in text and "kept too few images to train on" in text
    assert "no face 3" in text and "kept 0, needed 6" in text
    assert "hint: add more photos" in text
    assert len(list(read_jsonl(tmp_path / "run" / CURATION_LOG))) == 3  # the verdicts are written anyway

    # `zirelia train` run alone afterwards must not train on what little curation kept.
    from zirelia_local.training import run_training
    from zirelia_local.training.outputs import train_dir

    config = load_config(config_path)
    with pytest.raises(ZireliaError, match=r"curation kept 0 image\(s\) .* fewer than the minimum 6") as caught:
        run_training(config)
    assert "rerun `zirelia curate CONFIG`" in caught.value.hint
    assert not train_dir(config).exists()


def test_training_refuses_a_set_curated_in_record_mode_once_the_config_enforces(tmp_path):
    from zirelia_local.training import run_training

    config = load_config(write_config(tmp_path))
    config.run_dir.mkdir(parents=True)
    (config.run_dir / CURATION_SUMMARY).write_text(json.dumps({"mode": "record", "ok": True, "kept": 6}))
    with pytest.raises(ZireliaError, match='mode = "record"'):
        run_training(config)


def test_images_into_a_run_dir_with_a_generated_dataset_is_refused(tmp_path):
    config = load_config(write_config(tmp_path))
    write_jsonl(config.run_dir / "manifest.jsonl", [{"id": "img_00000", "status": "generated", "file": "x.png"}])
    folder = make_folder(tmp_path / "photos", {"n.png": noise(256, seed=2)})
    with pytest.raises(ZireliaError, match="already holds a generated dataset") as caught:
        run_curate(config, images_dir=folder)
    assert "--run-dir" in caught.value.hint and caught.value.exit_code == 2  # README: --images problems exit 2


def test_top_up_rounds_generate_new_seeds_then_stop_with_the_numbers(tmp_path, tiny_pipe, embedder):
    # The tiny random model draws no faces: every round rejects everything, which shows the rounds at work.
    config = load_config(write_config(tmp_path, count=2, extra='[curate]\nmode = "enforce"\ntop_up_rounds = 2\n'))
    run_dir = config.run_dir
    manifest = Manifest(run_dir)
    entries = plan_images(config.persona, config.dataset)
    write_jsonl(run_dir / PLAN_NAME, [entry.to_record() for entry in entries])  # as the dataset stage does
    generate_images(config, run_dir, entries, manifest, pipe=tiny_pipe)

    with pytest.raises(ZireliaError) as caught:
        run_curate(config, embedder=embedder, pipe=tiny_pipe)
    message = caught.value.message
    manifest = Manifest(run_dir)
    records = sorted(manifest, key=lambda r: r["index"])
    # round 1 asks for ceil(2 missing * 1.2 / 25%) = 10 images, round 2 again 10
    assert [r["round"] for r in records] == [0] * 2 + [1] * 10 + [2] * 10
    assert [r["index"] for r in records] == list(range(22))
    assert all(r["status"] == "generated" for r in records)
    assert len({r["seed"] for r in records[2:]}) == 20 and not {r["seed"] for r in records[2:]} & {
        r["seed"] for r in records[:2]
    }
    assert [r["index"] for r in read_jsonl(run_dir / PLAN_NAME)] == list(range(22))
    assert "after 2 top-up round(s)" in message
    assert "planned 22, generated 22, no face 22" in message and "kept 0, needed 2" in message
    assert "top_up_rounds (now 2)" in caught.value.hint
    log = list(read_jsonl(run_dir / CURATION_LOG))
    assert len(log) == 22 and not any(line["kept"] for line in log)
    assert all((r["curation"]["kept"], r["curation"]["reason"]) == (False, "no_face") for r in records)
    assert (run_dir / CONTACT_SHEET).is_file()

    # A rerun has no rounds left: same verdict, no new images.
    with pytest.raises(ZireliaError, match="planned 22, generated 22"):
        run_curate(config, embedder=embedder, pipe=tiny_pipe)
    assert len(Manifest(run_dir)) == 22


def test_the_pipeline_loads_flux_once_for_the_dataset_and_the_top_up_rounds(tmp_path, monkeypatch):
    import zirelia_local.dataset.flux as flux
    from zirelia_local.pipeline import run_pipeline

    loads = []
    real_load = flux.load_flux_pipeline

    def counting_load(*args, **kwargs):  # the real loader, counted
        loads.append(args[0].model)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(flux, "load_flux_pipeline", counting_load)
    config = load_config(write_config(tmp_path, count=2, extra="[curate]\ntop_up_rounds = 1\n"))
    with pytest.raises(ZireliaError, match="after 1 top-up round"):  # the tiny model draws no faces
        run_pipeline(config)
    assert len(Manifest(config.run_dir)) == 12  # 2 planned + 10 topped up
    assert loads == ["builtin:tiny-flux"]


def test_an_interrupted_top_up_round_is_finished_with_the_planned_seeds(tmp_path, tiny_pipe, embedder):
    config = load_config(write_config(tmp_path, count=2, extra="[curate]\ntop_up_rounds = 1\n"))
    run_dir = config.run_dir
    manifest = Manifest(run_dir)
    generate_images(config, run_dir, plan_images(config.persona, config.dataset), manifest, pipe=tiny_pipe)
    # a killed round 1 left two planned, undrawn entries in the manifest
    for entry in plan_images(config.persona, config.dataset, start=2, count=2):
        manifest.upsert(image_record(entry, config, round_index=1))
    manifest.save()
    with pytest.raises(ZireliaError, match="after 1 top-up round"):
        run_curate(config, embedder=embedder, pipe=tiny_pipe)
    records = sorted(Manifest(run_dir), key=lambda r: r["index"])
    assert [(r["index"], r["round"], r["status"]) for r in records] == [
        (0, 0, "generated"),
        (1, 0, "generated"),
        (2, 1, "generated"),
        (3, 1, "generated"),
    ]
    planned = plan_images(config.persona, config.dataset, start=2, count=2)
    assert [r["seed"] for r in records[2:]] == [entry.seed for entry in planned]


def test_cluster_choice_is_the_largest_cohesive_group(embedder):
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, 128), rng.normal(0, 0.1, 128)  # ~1.6 apart
    group_a = [(f"a{i}", a + rng.normal(0, 0.02, 128)) for i in range(3)]
    group_b = [(f"b{i}", b + rng.normal(0, 0.02, 128)) for i in range(4)]
    loner = [("c", rng.normal(0, 0.1, 128))]
    choice = choose_cluster(embedder, group_a + loner + group_b, threshold=0.6)
    assert choice.seed.startswith("b") and choice.count == 4
    assert np.linalg.norm(choice.embedding - b) < 0.2 < 1.0 < np.linalg.norm(choice.embedding - a)
    assert choose_cluster(embedder, [], threshold=0.6) is None


def test_top_up_count_follows_the_acceptance_rate():
    assert top_up_count(missing=10, passing=0, scanned=20) == 48  # floor 25%: 10 * 1.2 / 0.25
    assert top_up_count(missing=10, passing=10, scanned=20) == 24  # 50%: 10 * 1.2 / 0.5
    assert top_up_count(missing=1, passing=9, scanned=10) == 2


def test_contact_sheet_grid_frames_and_labels(tmp_path):
    noise(64, seed=4).save(tmp_path / "a.png")
    Image.new("RGB", (40, 80), (0, 0, 255)).save(tmp_path / "b.png")
    items = [
        SheetItem(tmp_path / "a.png", "a d=0.31\nkept: same identity", True, box=(8, 8, 40, 40)),
        SheetItem(tmp_path / "b.png", "b d=0.80\nrejected: wrong identity", False),
        SheetItem(tmp_path / "missing.png", "gone", False),
    ]
    out = contact_sheet(items, tmp_path / "sheet.png", thumb=100, columns=2, title="test sheet")
    sheet = np.asarray(Image.open(out).convert("RGB"))
    height, width, _ = sheet.shape
    assert width == 6 + 2 * (100 + 8 + 6)
    assert height > 2 * (100 + 8) + 2 * 14
    header = 14 + 12
    assert tuple(sheet[header + 6 + 1, 6 + 1]) == OK_COLOUR  # first cell's frame
    assert tuple(sheet[header + 6 + 1, 6 + 114 + 1]) == REJECTED_COLOUR  # second cell's frame
    assert tuple(sheet[header + 6 + 54, 6 + 114 + 54]) == (0, 0, 255)  # the blue image, centred in its cell


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end_in_record_mode(tmp_path):
    result = run_cli(["-m", "zirelia_local.train", "configs/demo.toml", "--run-dir", str(tmp_path / "demo")], cwd=REPO)
    assert result.returncode == 0, result.stderr
    log = list(read_jsonl(tmp_path / "demo" / CURATION_LOG))
    assert len(log) == 8 and all(line["kept"] and line["mode"] == "record" for line in log)
    assert len(list((tmp_path / "demo" / "train_data").glob("*.png"))) == 8
