"""The one way in for an image file a user or a model produced: `open_image`, `read_header`, `load_rgb`; and
the pure image measures the critic's checks and the dataset's anchor choice share (sharpness, exposure).

Every stage opens images through here (the import of `--images`, the face scan, reference photos, contact
sheets, the critic, report thumbnails, training), so they all share one guard: a decompression-bomb limit
(`MAX_PIXELS`, checked on the header before a pixel is decoded), truncated files and headers that lie about
the data behind them, and unreadable paths. A refusal is an `ImageRefused` with a short `reason`
("too large: 400 MP, limit 179 MP") that the caller turns into a verdict on that one image; it is a
ZireliaError, so a refusal nobody catches still ends as a message naming the file, never a traceback.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.paths import describe_os_error, display_path, path_problem, printable

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
#: Pillow's own decompression-bomb error limit (2 x its default Image.MAX_IMAGE_PIXELS), about 179 MP:
#: far above any camera (a 42 MP phone photo passes) and still well inside the memory of a training box.
MAX_PIXELS = 178_956_970
EXIF_ORIENTATION = 0x0112
# What Pillow raises on bytes it cannot decode (found by fuzzing real JPEG/PNG/WebP/BMP files: OSError for
# truncated data, SyntaxError for broken PNG chunks; the others come from its parsers of other formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageRefused(ZireliaError):
    """An image file that cannot be used. `reason` says why in a few words, for the verdict on that image."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(
            f"cannot use the image {display_path(path)}: {reason}",
            hint="replace or remove that file (images must be PNG, JPEG, WebP or BMP, at most "
            f"{megapixels(MAX_PIXELS)} MP)",
        )
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself, read without decoding its pixels."""

    format: str | None
    mode: str
    size: tuple[int, int]
    #: False when EXIF asks for a rotation or mirror before the image is upright
    upright: bool


def megapixels(pixels: int) -> str:
    """`pixels` in megapixels as a message shows them: "400", "179", "0.3"."""
    return f"{pixels / 1e6:.0f}" if pixels >= 1e6 else f"{pixels / 1e6:.1f}"


def too_large_reason(pixels: int, limit: int = MAX_PIXELS) -> str:
    return f"too large: {megapixels(pixels)} MP, limit {megapixels(limit)} MP"


def _check_size(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRefused(path, f"empty image ({width} x {height} pixels)")
    if width * height > MAX_PIXELS:
        raise ImageRefused(path, too_large_reason(width * height))


def _reason(error: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, Image.DecompressionBombError):
        # Pillow's own check (its limit may have been lowered by another library): use its figures.
        found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(error))
        return too_large_reason(int(found[1]), int(found[2])) if found else "too large (decompression-bomb limit)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read (an unknown format, or damaged)"
    if isinstance(error, MemoryError):
        return "not enough memory to decode it"
    if isinstance(error, OSError) and error.errno is not None:
        return f"cannot be read ({describe_os_error(error)})"
    text = printable(str(error)) or type(error).__name__
    if "truncated" in text:
        return f"truncated ({text})"
    return f"damaged ({text})"


@contextmanager
def _refusals(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn everything that can go wrong opening or decoding `path` into an ImageRefused."""
    from PIL import Image

    problem = path_problem(path, "file")
    if problem is not None:
        raise ImageRefused(path, problem)
    with warnings.catch_warnings():
        # Between Pillow's warning limit and MAX_PIXELS an image is fine: no warning on the console.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, MemoryError, *_DECODE_ERRORS) as error:
            raise ImageRefused(path, _reason(error)) from None


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Format, mode, size and orientation of an image file, without decoding it; raises ImageRefused when
    the file is not an image or is larger than MAX_PIXELS."""
    from PIL import Image

    with _refusals(path), Image.open(path) as opened:
        _check_size(path, opened.size)
        orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
        return ImageHeader(opened.format, opened.mode, opened.size, orientation == 1)


def open_image(path: str | os.PathLike[str]) -> Any:
    """The whole image, decoded, upright (EXIF rotation applied: phone photos store it there) and RGB, as a
    PIL image; raises ImageRefused with the reason when it cannot be used."""
    from PIL import Image, ImageOps

    with _refusals(path), Image.open(path) as opened:
        _check_size(path, opened.size)
        return ImageOps.exif_transpose(opened).convert("RGB")


def png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks of an image file (our PNGs record prompt, seed and model there), after the same checks
    as `open_image`, the pixels decoded too so a file still being written is refused."""
    from PIL import Image

    with _refusals(path), Image.open(path) as opened:
        _check_size(path, opened.size)
        opened.load()
        return dict(getattr(opened, "text", {}) or {})


def load_rgb(image: Any) -> np.ndarray:
    """RGB uint8 array (H, W, 3), C-contiguous, from a path (through `open_image`), a PIL image or an array."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


SHARPNESS_MAX_SIDE = 512


def grey(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB uint8 array, as float32 in 0..255."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (grey levels 0..255); 0 for images under 3x3."""
    gray = np.asarray(gray, dtype=np.float32)
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    laplacian = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * gray[1:-1, 1:-1]
    return float(laplacian.var())


def sharpness_region(rgb: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The grey region the sharpness is measured on: the face box (if any), long side at most 512 px."""
    from PIL import Image

    region = rgb
    if box is not None:
        left, top, right, bottom = box
        if right - left >= 3 and bottom - top >= 3:
            region = rgb[top:bottom, left:right]
    height, width = region.shape[:2]
    scale = SHARPNESS_MAX_SIDE / max(height, width)
    if scale < 1.0:
        resized = Image.fromarray(np.ascontiguousarray(region)).resize(
            (max(round(width * scale), 1), max(round(height * scale), 1)), Image.BILINEAR
        )
        region = np.asarray(resized)
    return grey(region)


def mean_brightness(rgb: np.ndarray) -> float:
    """Mean luma in 0..1."""
    return float(grey(rgb).mean() / 255.0)
