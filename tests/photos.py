"""The public-domain face photos of tests/data and images derived from them, for the face, curation and critic
tests: real faces, so the embedders and checks run on what they are built for."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from tests.conftest import DATA


def photo(name: str) -> Image.Image:
    """A public-domain test photo (tests/data/README.md): "obama", "obama2", "obama3" or "biden" (".jpg" optional)."""
    with Image.open(DATA / (name if name.endswith(".jpg") else f"{name}.jpg")) as opened:
        return opened.convert("RGB")


def blurred(image: Image.Image, radius: float = 2.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def darkened(image: Image.Image, factor: float = 0.12) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def brightened(image: Image.Image, keep: float = 0.12) -> Image.Image:
    """Pushed towards white: each pixel keeps `keep` of its distance from 255."""
    array = np.asarray(image, dtype=np.float32)
    return Image.fromarray((255 - (255 - array) * keep).astype(np.uint8))


def side_by_side(*images: Image.Image | str) -> Image.Image:
    """Images (or photo names) next to each other on a grey canvas, left to right."""
    loaded = [photo(image) if isinstance(image, str) else image for image in images]
    canvas = Image.new("RGB", (sum(image.width for image in loaded), max(image.height for image in loaded)), (128,) * 3)
    x = 0
    for image in loaded:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


def small_face(image: Image.Image, face_px: int = 55, canvas: int = 400) -> Image.Image:
    """The photo shrunk so its ~155 px face is about `face_px`, pasted in the middle of a grey canvas."""
    scale = face_px / 155
    shrunk = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    out = Image.new("RGB", (canvas, canvas), (128, 128, 128))
    out.paste(shrunk, ((canvas - shrunk.width) // 2, (canvas - shrunk.height) // 2))
    return out


def cut_off(image: Image.Image) -> Image.Image:
    """Cropped through the face (dlib puts the photos' face boxes within x = 81..270)."""
    return image.crop((180, 0, image.width, image.height))


def noise(size: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
