"""Image input for embedders: a path, a PIL image or an array, always as an RGB uint8 array."""

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
