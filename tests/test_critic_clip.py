"""Loading the CLIP model for prompt adherence: from a model folder or a safetensors file, never a pickle,
never a silent random model; unavailable (with the reason) when no weights are configured."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.critic_support import build_tiny_clip
from tests.photos import noise
from zirelia_local.common.config import CriticConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.critic.clip_score import load_clip_scorer


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_no_weights_configured_is_unavailable_with_the_reason():
    availability = load_clip_scorer(CriticConfig())  # ViT-B-32, clip_pretrained unset: the demo's case
    assert availability.scorer is None
    assert "clip_pretrained is not set" in availability.reason and ".safetensors" in availability.reason


def test_model_folder_loads_and_scores_deterministically(clip_folder):
    availability = load_clip_scorer(CriticConfig(clip_model=str(clip_folder)))
    scorer = availability.scorer
    assert scorer is not None and "open_clip_model.safetensors" in availability.source
    images = [noise(64, seed=1), noise(64, seed=2)]
    first = scorer.score(images, ["a photo of a man", "a photo of a man"])
    again = scorer.score(images, ["a photo of a man", "a photo of a man"])
    other_text = scorer.score(images, ["a red car on a beach at night", "a red car on a beach at night"])
    assert first == pytest.approx(again, abs=1e-6)
    assert first[0] != pytest.approx(first[1], abs=1e-6)  # the image matters
    assert first[0] != pytest.approx(other_text[0], abs=1e-6)  # the text matters
    assert all(-1.0 <= value <= 1.0 for value in first + other_text)
    # Another seed's weights give other scores: the file's weights were really loaded.
    other = build_tiny_clip(clip_folder.parent / "other", seed=1)
    reloaded = load_clip_scorer(CriticConfig(clip_model=str(other))).scorer
    assert reloaded.score(images[:1], ["a photo of a man"])[0] != pytest.approx(first[0], abs=1e-6)


def test_folder_without_safetensors_weights_is_unavailable(clip_folder, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((clip_folder / "open_clip_config.json").read_text())
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"a pickle is never loaded")
    availability = load_clip_scorer(CriticConfig(clip_model=str(folder)))
    assert availability.scorer is None and "no .safetensors CLIP weights" in availability.reason


def test_pickled_weights_are_refused_unless_the_run_allows_pickles(clip_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(load_file(clip_folder / "open_clip_model.safetensors"), pickled)  # our own pickle, for the opt-in
    for model in (str(clip_folder), "ViT-B-32"):
        with pytest.raises(ZireliaError, match="is a pickled file"):
            load_clip_scorer(CriticConfig(clip_model=model, clip_pretrained=str(pickled)))
    opted_in = load_clip_scorer(
        CriticConfig(clip_model=str(clip_folder), clip_pretrained=str(pickled)), allow_pickle=True
    )
    reference = load_clip_scorer(CriticConfig(clip_model=str(clip_folder)))
    image = noise(64, seed=5)
    assert opted_in.scorer.score([image], ["a photo"]) == pytest.approx(reference.scorer.score([image], ["a photo"]))


def test_missing_file_unknown_tag_and_unknown_model_are_errors(tmp_path):
    with pytest.raises(ZireliaError, match="does not exist"):
        load_clip_scorer(CriticConfig(clip_pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ZireliaError, match=r"not an open_clip tag of ViT-B-32.*laion2b_s34b_b79k"):
        load_clip_scorer(CriticConfig(clip_pretrained="no_such_tag"))
    with pytest.raises(ZireliaError, match="neither an open_clip architecture nor a model folder"):
        load_clip_scorer(CriticConfig(clip_model="ViT-Q-99"))


def test_weights_of_another_architecture_are_an_error(clip_folder):
    # Tiny weights into the ViT-B-32 architecture: a clear error, not a half-loaded model.
    with pytest.raises(ZireliaError, match="do not fit the ViT-B-32 architecture"):
        load_clip_scorer(
            CriticConfig(clip_model="ViT-B-32", clip_pretrained=str(clip_folder / "open_clip_model.safetensors"))
        )


def test_scores_pil_and_array_images_alike(clip_folder):
    import numpy as np

    scorer = load_clip_scorer(CriticConfig(clip_model=str(clip_folder))).scorer
    image = noise(64, seed=3)
    as_pil = scorer.score([image], ["a photo"])[0]
    as_array = scorer.score([np.asarray(image)], ["a photo"])[0]
    assert as_pil == pytest.approx(as_array, abs=1e-6)
    assert isinstance(image, Image.Image)
