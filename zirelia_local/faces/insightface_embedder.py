"""insightface embedder: SCRFD detection + ArcFace identity (`buffalo_l`), the quality choice.

The model files are never downloaded here. They must already be in `<root>/models/<model>/*.onnx` (for
`buffalo_l`: `det_10g.onnx`, the SCRFD detector, and `w600k_r50.onnx`, the ArcFace ResNet-50 trained on
WebFace600K). The folder is checked, and each file is classified by the same shape rule insightface's model
router uses, BEFORE `FaceAnalysis` is built: insightface would otherwise start a download when the folder
is missing and fail with a bare `AssertionError` when it holds no detector.

Licence: the insightface project releases the `buffalo_l` weights for non-commercial research use only.

Same person when the cosine similarity of the normalised embeddings is >= 0.40 (insightface's own default),
i.e. `distance = 1 - cosine <= 0.60`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from zirelia_local.common.console import info
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.images import load_rgb
from zirelia_local.faces.base import DetectedFace, FaceEmbedder

#: insightface's default same-person cosine similarity
INSIGHTFACE_SAME_PERSON_COSINE = 0.40
INSIGHTFACE_SAME_PERSON_DISTANCE = 1.0 - INSIGHTFACE_SAME_PERSON_COSINE
DETECTION_SIZE = (640, 640)
# The files of the packs we document; other packs are accepted as long as they hold a detector and a recogniser.
KNOWN_PACK_FILES = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
LICENCE_NOTE = (
    "licence: the insightface model packs (buffalo_l and the others) are released for non-commercial research "
    'use only; for any other use set [curate] embedder = "dlib"'
)
INSTALL_HINT = "pip install 'zirelia-local[insightface]' (or 'zirelia-local[insightface-gpu]' for CUDA)"


def _where_to_put(model_dir: Path, model: str) -> str:
    files = KNOWN_PACK_FILES.get(model)
    expected = f" ({', '.join(files)})" if files else ""
    return (
        f"download {model}.zip from the insightface project's GitHub releases (github.com/deepinsight/insightface) "
        f"and unzip it so the .onnx files{expected} are directly in {model_dir}, or point [curate] insightface_root "
        f"at the folder that holds models/{model}/; zirelia never downloads these files itself. {LICENCE_NOTE}"
    )


def classify_onnx(path: Path) -> str:
    """'detection', 'recognition' or 'other', by the shape rule of insightface's model router.

    Detection: five or more outputs (SCRFD: scores, boxes and key points per stride). Recognition: one square
    NCHW input of at least 112 px, a multiple of 16, that is not the 192 px landmark or 96 px attribute model.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the damage
        raise ZireliaError(
            f"{path} is not a readable ONNX model ({type(error).__name__}); the download may be incomplete",
            hint=f"delete it and unzip the model pack again. {LICENCE_NOTE}",
        ) from None
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(graph.output) >= 5:
        return "detection"
    if not inputs:
        return "other"
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] is None or dims[2] != dims[3]:
        return "other"
    side = dims[2]
    if side in (192, 96) or (len(inputs) == 2 and side == 128):
        return "other"
    return "recognition" if side >= 112 and side % 16 == 0 else "other"


def check_model_dir(root: Path, model: str) -> dict[str, list[Path]]:
    """The pack's .onnx files by task; raises a ZireliaError saying what is missing and where to put it."""
    model_dir = Path(root).expanduser() / "models" / model
    if not model_dir.is_dir():
        raise ZireliaError(
            f"insightface model files not found: {model_dir} does not exist", hint=_where_to_put(model_dir, model)
        )
    files = sorted(model_dir.glob("*.onnx"))
    if not files:
        raise ZireliaError(
            f"insightface model folder {model_dir} holds no .onnx files", hint=_where_to_put(model_dir, model)
        )
    by_task: dict[str, list[Path]] = {"detection": [], "recognition": [], "other": []}
    for path in files:
        by_task[classify_onnx(path)].append(path)
    names = ", ".join(path.name for path in files)
    for task, role in (("detection", "face detector (SCRFD)"), ("recognition", "face recogniser (ArcFace)")):
        if not by_task[task]:
            raise ZireliaError(
                f"insightface model folder {model_dir} has no {task} model, i.e. no {role}; found: {names}",
                hint=_where_to_put(model_dir, model),
            )
    return by_task


def onnx_providers(device: str) -> tuple[list[str], int]:
    """onnxruntime providers and insightface ctx_id for `device` (auto, cpu, cuda, cuda:N)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"], -1
    if device.startswith("cuda") or device == "auto":
        if not has_cuda:
            raise ZireliaError(
                f"[curate] device = {device!r}, but onnxruntime has no CUDA provider (available: {', '.join(available)})",
                hint="pip install 'zirelia-local[insightface-gpu]' (onnxruntime-gpu instead of onnxruntime), "
                'or set [curate] device = "cpu"',
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], index
    raise ZireliaError(f"[curate] device = {device!r} is not supported by insightface", hint="use auto, cpu or cuda")


class InsightFaceEmbedder(FaceEmbedder):
    """ArcFace identity vectors (512-d, compared by cosine) from an insightface model pack on disk."""

    name = "insightface"
    threshold = INSIGHTFACE_SAME_PERSON_DISTANCE

    def __init__(self, root: Path | str, model: str = "buffalo_l", device: str = "auto") -> None:
        try:
            from insightface.app import FaceAnalysis
            from insightface.utils import face_align
        except ImportError as error:
            raise ZireliaError(
                f"the insightface embedder needs the insightface package ({error})", hint=INSTALL_HINT
            ) from None
        self.root = Path(root).expanduser()
        self.model = model
        check_model_dir(self.root, model)
        providers, ctx_id = onnx_providers(device)
        model_dir = (self.root / "models" / model).resolve()
        # `name` as the absolute folder: insightface joins it with root/models (a no-op for an absolute path) or,
        # from 2.x, takes an existing directory as is; either way the checked folder is the one loaded.
        self._app = FaceAnalysis(
            name=str(model_dir),
            root=str(self.root),
            allowed_modules=["detection", "recognition"],
            providers=providers,
        )
        self._app.prepare(ctx_id=ctx_id, det_size=DETECTION_SIZE)
        self._detector = self._app.models["detection"]
        self._recogniser = self._app.models["recognition"]
        self._face_align = face_align
        batch_dim = self._recogniser.input_shape[0]
        # w600k_r50 has a symbolic batch axis; a pack with a fixed batch of 1 is embedded one face at a time.
        self._recogniser_batch = None if isinstance(batch_dim, int) and batch_dim == 1 else 64
        self.providers = providers
        info(escape(f"insightface {model} on {providers[0].replace('ExecutionProvider', '')} ({LICENCE_NOTE})"))

    @property
    def model_id(self) -> str:
        return f"insightface:{self.model}"

    def detect(self, image: Any) -> list[DetectedFace]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Any]) -> list[list[DetectedFace]]:
        """Detect per image (SCRFD takes one image a call), then embed all faces in batched ArcFace calls."""
        found: list[tuple[np.ndarray, np.ndarray]] = []
        crops: list[np.ndarray] = []
        for image in images:
            bgr = np.ascontiguousarray(load_rgb(image)[..., ::-1])
            boxes, keypoints = self._detector.detect(bgr, max_num=0, metric="default")
            if boxes.shape[0] and keypoints is None:
                raise ZireliaError(f"the detector of {self.model} gives no key points, so faces cannot be aligned")
            found.append((boxes, bgr))
            for index in range(boxes.shape[0]):
                crops.append(self._align(bgr, keypoints[index]))
        vectors = self._embed(crops)
        results: list[list[DetectedFace]] = []
        row = 0
        for boxes, bgr in found:
            height, width = bgr.shape[:2]
            faces = []
            for index in range(boxes.shape[0]):
                left, top, right, bottom, score = (float(value) for value in boxes[index])
                box = (max(round(left), 0), max(round(top), 0), min(round(right), width), min(round(bottom), height))
                faces.append(DetectedFace(box=box, score=score, embedding=vectors[row]))
                row += 1
            faces.sort(key=lambda face: face.area, reverse=True)
            results.append(faces)
        return results

    def _align(self, bgr: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """The face warped onto ArcFace's 5-point template, at the recogniser's input size (112 px)."""
        import warnings

        with warnings.catch_warnings():
            # insightface's alignment calls a scikit-image method that warns of its own deprecation.
            warnings.simplefilter("ignore", FutureWarning)
            return self._face_align.norm_crop(bgr, landmark=keypoints, image_size=self._recogniser.input_size[0])

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, 512), np.float32)
        step = self._recogniser_batch or 1
        parts = [self._recogniser.get_feat(crops[i : i + step]) for i in range(0, len(crops), step)]
        vectors = np.concatenate([np.asarray(part, np.float32).reshape(len(part), -1) for part in parts])
        # insightface's `normed_embedding`: the raw vector divided by its norm.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity (insightface's `compute_sim`); same person when >= 0.40."""
        a = np.asarray(a, np.float32).ravel()
        b = np.asarray(b, np.float32).ravel()
        return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """1 - cosine similarity; same person when <= 0.60."""
        return 1.0 - self.similarity(a, b)

    def centroid(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        mean = np.mean(np.stack([np.asarray(e, np.float32) for e in embeddings]), axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
