"""Identity-cohesion figures on the real photos of tests/data (dlib embedder): one person's photos agree more
than a mix of people, by every figure, both computed directly and through a real curation run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_config
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.curate import run_curate
from zirelia_local.curate.cohesion import identity_cohesion, mean_pairwise_distance


@pytest.fixture(scope="module")
def embedder():
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    return DlibEmbedder()


def _faces(embedder, names):
    return [(name, embedder.detect(photo(name))[0].embedding) for name in names]


def test_one_persons_photos_are_more_cohesive_than_a_mix(embedder):
    one = identity_cohesion(embedder, _faces(embedder, ["obama", "obama2", "obama3"]), 3, embedder.threshold)
    mix = identity_cohesion(embedder, _faces(embedder, ["obama", "biden", "obama3"]), 3, embedder.threshold)
    # tests/data/README.md: obama photos 0.30-0.43 apart, biden 0.83-0.86 from each.
    assert one.mean_pairwise_distance == pytest.approx((0.35 + 0.30 + 0.43) / 3, abs=0.02)
    assert one.mean_pairwise_distance < embedder.threshold < mix.mean_pairwise_distance
    assert one.largest_cluster == 3 and one.largest_cluster_share == 1.0
    assert mix.largest_cluster == 2 and mix.largest_cluster_share == pytest.approx(2 / 3)
    # Images without a usable face count against the share: 3 faces among 5 images.
    assert (
        identity_cohesion(embedder, _faces(embedder, ["obama", "obama2", "obama3"]), 5, 0.6).largest_cluster_share
        == 0.6
    )
    assert mean_pairwise_distance(embedder, []) is None


def test_curation_writes_the_figures_for_a_folder_of_photos(tmp_path, embedder):
    figures = {}
    for name, photos in {"one": ["obama", "obama2", "obama3"], "mix": ["obama", "biden", "obama2"]}.items():
        folder = tmp_path / f"{name}-photos"
        folder.mkdir()
        for photo_name in photos:
            photo(photo_name).save(folder / f"{photo_name}.png")
        config = load_config(
            write_config(tmp_path / name, count=3, extra='\n[curate]\nmode = "record"\n', name="config.toml")
        )
        run_curate(config, folder, embedder=embedder)
        figures[name] = json.loads((config.run_dir / "curation.json").read_text())["cohesion"]
    one, mix = figures["one"], figures["mix"]
    assert one["images"] == mix["images"] == 3 and one["faces"] == mix["faces"] == 3
    assert one["mean_pairwise_distance"] < mix["mean_pairwise_distance"]
    assert one["largest_cluster_share"] > mix["largest_cluster_share"]
    assert one["top_up_rounds"] == mix["top_up_rounds"] == 0
