"""Image input for embedders (a path, a PIL image or an array, always as an RGB uint8 array) and the pure image
measures the critic's checks and the dataset's anchor choice share: sharpness and exposure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_rgb(image: Any) -> np.ndarray:
    """RGB uint8 array (H, W, 3), C-contiguous, from a path, a PIL image or an array."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        with Image.open(Path(image)) as opened:
            # Phone photos store rotation in EXIF; faces must be upright for the detector.
            image = ImageOps.exif_transpose(opened).convert("RGB")
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
