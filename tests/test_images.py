"""The one image opener (`common/images.py`) on hostile files, and every place that opens an image through it:
a refusal is a reason on that one image, never a crash of the stage."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hostile import HUGE_SIDE, ODD_NAME, huge_png, lying_png, png_bytes, truncated_png
from tests.photos import photo
from zirelia_local.common.contact_sheet import REJECTED_COLOUR, SheetItem, contact_sheet
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.images import ImageRefused, load_rgb, open_image, read_header

TOO_LARGE = "too large: 400 MP, limit 179 MP"


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    return huge_png(tmp_path_factory.mktemp("huge") / "huge.png")


def refusal(path) -> str:
    with pytest.raises(ImageRefused) as caught:
        open_image(path)
    return caught.value.reason


def test_the_huge_test_image_is_real_and_cheap(tmp_path):
    started = time.perf_counter()
    path = huge_png(tmp_path / "huge.png")
    seconds = time.perf_counter() - started
    assert path.stat().st_size < 100_000 and seconds < 5, (path.stat().st_size, seconds)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # what every stage met before the opener


def test_the_limit_holds_when_another_library_switched_pillows_off(monkeypatch, huge):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some libraries do this on import
    with Image.open(huge) as opened:  # the header, read by Pillow alone: a real 400 MP 1-bit image
        assert opened.size == (HUGE_SIDE, HUGE_SIDE) and opened.mode == "1"
    assert refusal(huge) == TOO_LARGE  # our own check, before a pixel is decoded


def test_a_huge_image_is_refused_with_its_size_and_the_limit(huge):
    for reader in (read_header, open_image, load_rgb):
        with pytest.raises(ImageRefused) as caught:
            reader(huge)
        assert caught.value.reason == TOO_LARGE
    error = caught.value
    assert isinstance(error, ZireliaError) and error.exit_code == 1  # uncaught, it is still a message
    assert str(huge) in error.message and TOO_LARGE in error.message


def test_a_header_that_lies_about_its_size(tmp_path):
    # Claims 400 MP with one row of data: refused from the header, before a pixel is decoded.
    assert refusal(lying_png(tmp_path / "big.png", HUGE_SIDE, HUGE_SIDE)) == TOO_LARGE
    # Claims 300 x 300, holds no row at all: the decoder runs dry.
    assert refusal(lying_png(tmp_path / "empty.png", 300, 300, rows=0)).startswith("truncated")
    # Claims 300 x 300, holds one row in a complete zlib stream: Pillow cannot tell, and fills the rest with
    # black; the opener hands over the declared size (the face scan then finds no face in it).
    image = open_image(lying_png(tmp_path / "short.png", 300, 300, rows=1))
    assert image.size == (300, 300) and image.mode == "RGB"
    # Claims 0 pixels wide.
    assert refusal(_write(tmp_path / "zero.png", png_bytes(0, 10, b""))).startswith("not an image")


def test_truncated_empty_and_fake_images_are_refused_with_a_reason(tmp_path):
    assert refusal(truncated_png(tmp_path / "cut.png")).startswith("truncated")
    assert refusal(_write(tmp_path / "empty.jpg", b"")).startswith("not an image")
    assert refusal(_write(tmp_path / "text.jpg", b"hello")).startswith("not an image")
    (tmp_path / "folder.png").mkdir()
    assert refusal(tmp_path / "folder.png") == "is a folder, not a file"
    assert refusal(tmp_path / "missing.png") == "does not exist"
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    assert refusal(tmp_path / "dangling.png") == "does not exist (a symbolic link to a missing target)"
    assert refusal("/dev/null") == "is not a regular file (a device, pipe or socket)"


def test_an_image_between_the_warning_and_the_error_limits_opens_without_a_warning(tmp_path):
    path = lying_png(tmp_path / "100mp.png", 10_000, 10_000)  # Pillow warns from 89 MP; our limit is 179 MP
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_header(path).size == (10_000, 10_000)


def test_an_odd_file_name_opens_and_is_shown_escaped_when_refused(tmp_path):
    photo("obama").save(tmp_path / ODD_NAME, format="PNG")
    assert load_rgb(tmp_path / ODD_NAME).shape[2] == 3
    (tmp_path / ODD_NAME).write_bytes(b"")
    with pytest.raises(ImageRefused) as caught:
        open_image(tmp_path / ODD_NAME)
    message = caught.value.message
    assert "odd\\xff\\nname\\x1b[31m.png" in message and "\n" not in message and "\x1b" not in message
    message.encode("utf-8")  # printable: no surrogate escapes left


def test_contact_sheet_shows_refused_images_as_tiles_instead_of_crashing(tmp_path, huge):
    photo("obama").save(tmp_path / "face.png")
    items = [
        SheetItem(tmp_path / "face.png", "face\nkept", True),
        SheetItem(huge, f"huge.png\nrejected: unreadable file\n{TOO_LARGE}", False),
        SheetItem(truncated_png(tmp_path / "cut.png"), "cut", False),
        SheetItem(tmp_path / ODD_NAME, "odd\udcff name", False),  # missing, with an undecodable label
    ]
    sheet_path = contact_sheet(items, tmp_path / "sheet.png", thumb=64, columns=4, title="hostile\nsheet")
    with Image.open(sheet_path) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert sheet.size[0] >= 4 * 64
    assert (pixels == REJECTED_COLOUR).all(axis=-1).any()
    grey = (pixels == (120, 120, 120)).all(axis=-1)  # the "unreadable" tile
    assert grey.sum() > 3 * 40 * 40  # three refused images, each a grey tile


def test_report_thumbnail_of_a_refused_image_is_left_out(tmp_path, huge):
    from zirelia_local.report.render import thumbnail_uri

    photo("obama").save(tmp_path / "face.png")
    assert thumbnail_uri(tmp_path / "face.png").startswith("data:image/jpeg;base64,")
    assert thumbnail_uri(huge) is None and thumbnail_uri(truncated_png(tmp_path / "cut.png")) is None


def test_critic_rejects_an_unreadable_image_with_its_reason_and_judges_the_rest(tmp_path, huge):
    from zirelia_local.common.config import CriticConfig
    from zirelia_local.critic.clip_score import ClipAvailability
    from zirelia_local.critic.judge import Critic
    from zirelia_local.critic.retry import first_attempt, next_attempt
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    embedder = DlibEmbedder()
    critic = Critic(CriticConfig(), embedder, None, ClipAvailability(None, "no CLIP (test)"))
    photo("obama").save(tmp_path / "face.png")
    verdicts = critic.judge_batch([tmp_path / "face.png", huge, photo("obama2")], ["a man"] * 3)
    assert [v.scores.get("faces") for v in verdicts] == [1, None, 1]
    refused = verdicts[1]
    assert not refused.accepted and refused.failures == ["unreadable"]
    assert refused.reasons == [f"unreadable image huge.png: {TOO_LARGE}"]
    assert refused.summary == "rejected: unreadable image"
    config = CriticConfig(max_retries=1)
    retry = next_attempt(first_attempt("scene", 5, config), refused, config, 5)
    assert retry is not None and retry.seed != 5 and retry.framing == ()  # a new seed, nothing else


def test_training_on_an_image_that_became_unreadable_names_it(tmp_path, huge):
    from zirelia_local.training.flux_cache import load_square_image

    with pytest.raises(ZireliaError) as caught:
        load_square_image(huge, 64)
    assert f"training image {huge} cannot be used: {TOO_LARGE}" in caught.value.message
    assert "zirelia curate" in caught.value.hint


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_no_module_opens_an_image_file_but_the_opener():
    """Every image a user or a model produced goes through common/images.py: a new `Image.open` elsewhere
    would bypass the size limit and the refusals."""
    package = Path(__file__).resolve().parent.parent / "zirelia_local"
    opening = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "Image.open(" in path.read_text(encoding="utf-8") and path != package / "common" / "images.py"
    )
    assert opening == []
