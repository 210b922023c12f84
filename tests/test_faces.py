"""Face embedders on real photos (dlib, real weights) and insightface's loading path (stand-in ONNX files)."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, run_cli
from tests.onnx_standins import build_pack, build_recogniser, face_square_image
from tests.photos import side_by_side
from zirelia_local.common.config import CurateConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.faces import load_embedder
from zirelia_local.faces.identity import ReferenceIdentity, load_identity, save_identity

OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg"]


@pytest.fixture(scope="module")
def dlib_embedder():
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    return DlibEmbedder()


@pytest.fixture(scope="module")
def photo_faces(dlib_embedder):
    return {name: dlib_embedder.detect(DATA / name) for name in [*OBAMA, "biden.jpg"]}


# ------------------------------------------------------------------------------------------------------ dlib


def test_dlib_same_person_within_threshold_and_other_person_beyond(dlib_embedder, photo_faces):
    for name, faces in photo_faces.items():
        assert len(faces) == 1, name
        assert faces[0].size >= 120 and faces[0].embedding.shape == (128,)
    vector = {name: faces[0].embedding for name, faces in photo_faces.items()}
    for a, b in itertools.combinations(OBAMA, 2):
        assert dlib_embedder.distance(vector[a], vector[b]) < 0.5, (a, b)
        assert dlib_embedder.is_same(vector[a], vector[b])
    for name in OBAMA:
        assert dlib_embedder.distance(vector[name], vector["biden.jpg"]) > 0.7
        assert not dlib_embedder.is_same(vector[name], vector["biden.jpg"])
        # the model's own similarity ranks the same person above the other one; 0.5 sits at the threshold
        assert dlib_embedder.similarity(vector[name], vector["obama.jpg"]) > 0.5
        assert dlib_embedder.similarity(vector[name], vector["biden.jpg"]) < 0.5
    assert dlib_embedder.threshold == 0.6
    assert dlib_embedder.similarity(vector["obama.jpg"], vector["obama.jpg"]) == pytest.approx(1.0)


def test_dlib_batch_gives_the_same_faces_as_one_at_a_time(dlib_embedder, photo_faces):
    names = ["obama2.jpg", "biden.jpg", "obama.jpg"]
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    batch = dlib_embedder.detect_batch([DATA / name for name in names] + [noise])
    assert batch[3] == []
    for name, faces in zip(names, batch[:3], strict=True):
        assert [face.box for face in faces] == [face.box for face in photo_faces[name]]
        np.testing.assert_allclose(faces[0].embedding, photo_faces[name][0].embedding, atol=1e-4)


def test_dlib_finds_two_faces_side_by_side_largest_first(dlib_embedder, photo_faces):
    image = side_by_side("obama.jpg", "biden.jpg")
    faces = dlib_embedder.detect(image)
    assert len(faces) == 2
    assert faces[0].area >= faces[1].area
    obama_width = Image.open(DATA / "obama.jpg").width
    sides = sorted(faces, key=lambda face: face.box[0])
    assert sides[0].box[2] <= obama_width < sides[1].box[0]  # one face in each half
    assert dlib_embedder.is_same(sides[0].embedding, photo_faces["obama.jpg"][0].embedding)
    assert dlib_embedder.is_same(sides[1].embedding, photo_faces["biden.jpg"][0].embedding)


def test_dlib_boxes_are_in_input_pixels_when_the_image_is_downscaled_for_detection(dlib_embedder, photo_faces):
    original = Image.open(DATA / "obama.jpg")
    large = original.resize((original.width * 3, original.height * 3), Image.BICUBIC)  # > 1024 px: detected smaller
    faces = dlib_embedder.detect(large)
    assert len(faces) == 1
    small_box = photo_faces["obama.jpg"][0].box
    for big, small in zip(faces[0].box, small_box, strict=True):
        assert abs(big - 3 * small) <= 0.1 * 3 * photo_faces["obama.jpg"][0].size
    assert dlib_embedder.is_same(faces[0].embedding, photo_faces["obama.jpg"][0].embedding)


def test_noise_has_no_face(dlib_embedder):
    noise = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert dlib_embedder.detect(noise) == []
    assert dlib_embedder.detect(Image.fromarray(noise).convert("L")) == []  # greyscale input is accepted


def test_identity_file_round_trip_and_refuses_another_embedder(tmp_path, photo_faces):
    vector = photo_faces["obama.jpg"][0].embedding
    save_identity(tmp_path, ReferenceIdentity(embedding=vector, embedder="dlib", source="cluster", count=3))
    identity = load_identity(tmp_path, embedder="dlib")
    np.testing.assert_array_equal(identity.embedding, vector)
    assert (identity.source, identity.count) == ("cluster", 3)
    with pytest.raises(ZireliaError, match="made with the dlib embedder"):
        load_identity(tmp_path, embedder="insightface")


# ------------------------------------------------------------------------------------------------ insightface
# The real buffalo_l weights cannot be downloaded here (and are licensed for non-commercial research only):
# these tests build stand-in ONNX files with the same interface (tests/onnx_standins.py), which insightface's
# own router, SCRFD and ArcFace classes load and run.


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    build_pack(root)
    return root


@pytest.fixture(scope="module")
def insightface_embedder(standin_root):
    from zirelia_local.faces.insightface_embedder import InsightFaceEmbedder

    return InsightFaceEmbedder(root=standin_root, model="buffalo_l", device="cpu")


def test_insightface_loads_from_the_model_root_and_runs_detection_and_recognition(insightface_embedder):
    embedder = insightface_embedder
    assert embedder.providers == ["CPUExecutionProvider"]
    assert embedder.threshold == pytest.approx(0.6) and embedder.model_id == "insightface:buffalo_l"
    one = embedder.detect(face_square_image([(320, 320)]))
    assert len(one) == 1
    assert one[0].box == (256, 256, 384, 384) and one[0].score > 0.9
    assert one[0].embedding.shape == (512,)
    assert np.linalg.norm(one[0].embedding) == pytest.approx(1.0, abs=1e-5)  # normed_embedding
    assert embedder.detect(face_square_image([])) == []
    two = embedder.detect(face_square_image([(96, 96), (448, 448)]))
    assert sorted(face.box for face in two) == [(32, 32, 160, 160), (384, 384, 512, 512)]
    # batched recognition over several images gives the vectors of one-at-a-time calls
    tinted = face_square_image([(320, 320)], tint=(255, 225, 200))
    batch = embedder.detect_batch([face_square_image([(320, 320)]), tinted, face_square_image([])])
    assert [len(faces) for faces in batch] == [1, 1, 0]
    np.testing.assert_allclose(batch[0][0].embedding, one[0].embedding, atol=1e-5)
    a, b = batch[0][0].embedding, batch[1][0].embedding
    assert embedder.distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert embedder.similarity(a, b) == pytest.approx(float(np.dot(a, b)), abs=1e-5)  # cosine of unit vectors
    assert embedder.distance(a, b) == pytest.approx(1 - embedder.similarity(a, b))
    assert np.linalg.norm(embedder.centroid([a, b])) == pytest.approx(1.0, abs=1e-5)


def test_load_embedder_builds_insightface_from_the_config(standin_root):
    curate = CurateConfig(embedder="insightface", insightface_root=standin_root, device="cpu")
    embedder = load_embedder(curate)
    assert embedder.name == "insightface"
    assert len(embedder.detect(face_square_image([(320, 320)]))) == 1


def _insightface_error(root: Path, model: str = "buffalo_l", device: str = "cpu") -> ZireliaError:
    from zirelia_local.faces.insightface_embedder import InsightFaceEmbedder

    with pytest.raises(ZireliaError) as caught:
        InsightFaceEmbedder(root=root, model=model, device=device)
    return caught.value


def test_insightface_missing_folder_says_where_to_put_the_files_and_downloads_nothing(tmp_path):
    error = _insightface_error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "models" / "buffalo_l") in error.message
    assert "det_10g.onnx" in error.hint and "w600k_r50.onnx" in error.hint
    assert "non-commercial" in error.hint and 'embedder = "dlib"' in error.hint
    assert not (tmp_path / "nowhere").exists()  # insightface would have created it to download into


def test_insightface_empty_folder_is_a_clear_error_not_an_assertion(tmp_path):
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    error = _insightface_error(tmp_path)
    assert "holds no .onnx files" in error.message and "non-commercial" in error.hint


def test_insightface_missing_recognition_or_detection_model_is_named(tmp_path):
    build_pack(tmp_path / "a", detector=True, recogniser=False)
    error = _insightface_error(tmp_path / "a")
    assert "no recognition model" in error.message and "det_10g.onnx" in error.message
    build_pack(tmp_path / "b", detector=False, recogniser=True)
    error = _insightface_error(tmp_path / "b")
    assert "no detection model" in error.message and "w600k_r50.onnx" in error.message


def test_insightface_truncated_model_file_is_named(tmp_path):
    folder = build_pack(tmp_path)
    path = folder / "w600k_r50.onnx"
    path.write_bytes(path.read_bytes()[:3000])
    error = _insightface_error(tmp_path)
    assert "w600k_r50.onnx is not a readable ONNX model" in error.message


def test_insightface_loads_any_pack_with_a_detector_and_a_recogniser(tmp_path):
    folder = build_pack(tmp_path, model="mypack", detector=True, recogniser=False)
    build_recogniser(folder / "arc.onnx", dim=128, seed=3)
    from zirelia_local.faces.insightface_embedder import InsightFaceEmbedder

    embedder = InsightFaceEmbedder(root=tmp_path, model="mypack", device="cpu")
    faces = embedder.detect(face_square_image([(320, 320)]))
    assert len(faces) == 1 and faces[0].embedding.shape == (128,)


def test_insightface_cuda_without_the_cuda_provider_is_a_clear_error(standin_root):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime's CUDA provider")
    error = _insightface_error(standin_root, device="cuda")
    assert "no CUDA provider" in error.message and "insightface-gpu" in error.hint


def test_insightface_not_installed_hints_at_the_extra(standin_root):
    # Simulates a machine without the package: a None entry in sys.modules makes `import insightface` fail.
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["insightface"] = None
        from zirelia_local.cli import run_guarded
        from zirelia_local.faces.insightface_embedder import InsightFaceEmbedder
        sys.exit(run_guarded(lambda: InsightFaceEmbedder(root={str(standin_root)!r})))
        """
    )
    result = run_cli(["-c", code])
    assert result.returncode == 1, result.stderr
    assert "needs the insightface package" in result.stderr
    assert "pip install 'zirelia-local[insightface]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_curate_device_and_threshold_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        CurateConfig(device="gpu")
    with pytest.raises(ValidationError):
        CurateConfig(threshold=0)
    assert CurateConfig(device="cuda:1", threshold=0.55).threshold == 0.55
