"""dlib face embedder: the offline default.

Detection is dlib's HOG frontal-face detector; alignment uses the 5-point landmark model (the 68-point model
is licensed for non-commercial use only, so it is never loaded); the identity vector is dlib's 128-d ResNet
(`dlib_face_recognition_resnet_model_v1`). Same person when the euclidean distance is <= 0.6 (dlib's own
figure: 99.38% on LFW); measured here: same person 0.33-0.43, different people 0.63-0.97.

The weights come from the `face-recognition-models` package, located on disk without importing it (it
imports `pkg_resources`, which setuptools 82 removed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.images import load_rgb
from zirelia_local.faces.base import DetectedFace, FaceEmbedder

SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SAME_PERSON_DISTANCE = 0.6
# HOG finds faces down to ~80 px; images are scaled so the long side is at most this before detection.
_DETECT_MAX_SIDE = 1024


def dlib_models_dir() -> Path:
    """Folder holding face-recognition-models' .dat files."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ZireliaError(
            "the dlib face models are not installed (package face-recognition-models)",
            hint="pip install face-recognition-models (it is a dependency of zirelia-local; reinstall with "
            "`pip install -e .`)",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (SHAPE_PREDICTOR_5, RESNET_MODEL) if not (folder / name).is_file()]
    if missing:
        raise ZireliaError(
            f"face-recognition-models in {folder.parent} lacks {', '.join(missing)}",
            hint="install face-recognition-models 0.3.0 (the 0.1.3 wheel lacks the 5-point model): "
            "pip install 'face-recognition-models>=0.3.0'",
        )
    return folder


class DlibEmbedder(FaceEmbedder):
    name = "dlib"
    threshold = DLIB_SAME_PERSON_DISTANCE

    def __init__(self, *, upsample: int | None = None, num_jitters: int = 1) -> None:
        try:
            import dlib
        except ImportError as error:
            raise ZireliaError(
                "dlib is not installed",
                hint="pip install dlib-bin (a prebuilt wheel; `pip install dlib` compiles from source)",
            ) from error
        folder = dlib_models_dir()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape_predictor = dlib.shape_predictor(str(folder / SHAPE_PREDICTOR_5))
        self._encoder = dlib.face_recognition_model_v1(str(folder / RESNET_MODEL))
        self.upsample = upsample
        self.num_jitters = num_jitters

    def _detect_rects(self, rgb: np.ndarray) -> list[tuple[Any, float]]:
        """(dlib rectangle in `rgb` coordinates, detector score) pairs, largest first."""
        dlib = self._dlib
        height, width = rgb.shape[:2]
        scale = min(1.0, _DETECT_MAX_SIDE / max(height, width))
        small = rgb
        if scale < 1.0:
            from PIL import Image

            small = np.asarray(
                Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.BILINEAR)
            )
        # Upsampling finds smaller faces but costs 4x; only worth it on small images.
        upsample = self.upsample if self.upsample is not None else (1 if max(small.shape[:2]) < 640 else 0)
        rects, scores, _ = self._detector.run(small, upsample, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            if scale < 1.0:
                rect = dlib.rectangle(
                    round(rect.left() / scale),
                    round(rect.top() / scale),
                    round(rect.right() / scale),
                    round(rect.bottom() / scale),
                )
            found.append((rect, float(score)))
        found.sort(key=lambda item: item[0].area(), reverse=True)
        return found

    @staticmethod
    def _score(raw: float) -> float:
        # HOG scores are SVM margins (about -0.5 .. 3); squash to 0..1 so `min_detection_score` reads alike
        # for every embedder. A margin of 0 (dlib's own cut-off) maps to 0.5.
        return float(1.0 / (1.0 + np.exp(-2.0 * raw)))

    def _faces(self, rgb: np.ndarray, found: list[tuple[Any, float]], vectors: Sequence[Any]) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        faces = []
        for (rect, score), vector in zip(found, vectors, strict=True):
            box = (max(rect.left(), 0), max(rect.top(), 0), min(rect.right(), width), min(rect.bottom(), height))
            faces.append(DetectedFace(box=box, score=self._score(score), embedding=np.asarray(vector, np.float32)))
        return faces

    def detect(self, image: Any) -> list[DetectedFace]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Any]) -> list[list[DetectedFace]]:
        """Detect per image, then embed all faces of all images in one ResNet call."""
        dlib = self._dlib
        rgbs = [load_rgb(image) for image in images]
        found = [self._detect_rects(rgb) for rgb in rgbs]
        batch_images, batch_shapes, owners = [], [], []
        for index, (rgb, faces) in enumerate(zip(rgbs, found, strict=True)):
            if not faces:
                continue
            shapes = dlib.full_object_detections()
            for rect, _ in faces:
                shapes.append(self._shape_predictor(rgb, rect))
            batch_images.append(rgb)
            batch_shapes.append(shapes)
            owners.append(index)
        vectors_per_image: dict[int, Sequence[Any]] = {}
        if batch_images:
            computed = self._encoder.compute_face_descriptor(batch_images, batch_shapes, self.num_jitters)
            vectors_per_image = dict(zip(owners, computed, strict=True))
        return [
            self._faces(rgb, faces, vectors_per_image.get(index, [])) if faces else []
            for index, (rgb, faces) in enumerate(zip(rgbs, found, strict=True))
        ]

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        # Linear in distance, scaled so the same-person threshold (0.6) sits at 0.5 and identical vectors at 1.
        return 1.0 - self.distance(a, b) / (2 * DLIB_SAME_PERSON_DISTANCE)
