"""The anchor of an identity-anchored dataset (`[dataset] identity = "anchor"`): one portrait of the persona that
FLUX.1 Kontext puts into every planned scene, so every image starts from the same face.

It is the user's photo (`[dataset] anchor_image`, checked here before anything is drawn) or the best of a few
portraits the generator draws (`anchor_candidates.py`). Either way the run directory gets:

- `anchor.png`: the portrait Kontext edits, square at `[dataset] resolution` (a photo is cropped around its face);
- `anchor.json`: where it came from, the key it was made for (a changed photo or prompt makes a new anchor),
  its face and its sharpness and exposure, and, when drawn, every candidate with its figures;
- `anchor/`: the user's photo as given, or the drawn candidates.

The portrait checks are curation's face checks (`faces.verdict`) and the critic's image measures
(`common.images`), both on floors below the dataset stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, warn
from zirelia_local.common.errors import ConfigError, ZireliaError
from zirelia_local.common.files import (
    atomic_write_bytes,
    atomic_write_json,
    link_or_copy,
    png_bytes,
    read_json_object,
    sha256_file,
)
from zirelia_local.common.images import laplacian_variance, load_rgb, mean_brightness, open_image, sharpness_region
from zirelia_local.faces import DetectedFace, FaceEmbedder
from zirelia_local.faces.verdict import FACE_OK, face_verdict

ANCHOR_IMAGE = "anchor.png"
ANCHOR_INFO = "anchor.json"
ANCHOR_DIR = "anchor"
# A photo is cropped to a square this many face sizes wide (head and shoulders), centred on the face, so a
# small face in a large photo still fills the anchor; never wider than the photo's shorter side.
FACE_CROP_FACTOR = 3.0

VERDICT_TEXT = {
    "ok": "one clear face",
    "no_face": "no face found",
    "low_detection_score": "the detector is unsure of the face",
    "multiple_faces": "more than one face",
    "face_too_small": "face too small",
    "unreadable": "unreadable",
}


@dataclass(frozen=True)
class Anchor:
    """The anchor portrait on disk and what anchor.json says about it."""

    path: Path
    sha256: str
    info: dict[str, Any]

    def image(self) -> Any:
        """The portrait as an RGB PIL image."""
        return open_image(self.path)

    def manifest_field(self) -> dict[str, str]:
        """What a manifest row records about the anchor that made it."""
        return {"file": ANCHOR_IMAGE, "sha256": self.sha256, "source": str(self.info.get("source"))}


@dataclass(frozen=True)
class PortraitCheck:
    """The face checks and image measures of one portrait."""

    verdict: str
    face: DetectedFace | None
    faces: int
    sharpness: float
    brightness: float

    @property
    def ok(self) -> bool:
        return self.verdict == FACE_OK

    def to_record(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "verdict_text": VERDICT_TEXT.get(self.verdict, self.verdict),
            "faces": self.faces,
            "face": self.face.to_record() if self.face is not None else None,
            "sharpness": round(self.sharpness, 2),
            "brightness": round(self.brightness, 4),
        }


def check_portrait(config: ZireliaConfig, rgb: np.ndarray, faces: list[DetectedFace]) -> PortraitCheck:
    """Curation's face checks ([curate] limits) and the critic's sharpness (on the face) and exposure."""
    verdict, face = face_verdict(faces, config.curate)
    sharpness = laplacian_variance(sharpness_region(rgb, face.box if face is not None else None))
    return PortraitCheck(verdict, face, len(faces), sharpness, mean_brightness(rgb))


def portrait_warnings(config: ZireliaConfig, check: PortraitCheck) -> list[str]:
    """Why a portrait that passed the face checks may still be a weak anchor (the critic's thresholds)."""
    critic = config.critic
    notes = []
    if check.sharpness < critic.blur_threshold:
        notes.append(f"blurry face (Laplacian variance {check.sharpness:.0f} < {critic.blur_threshold:g})")
    if not critic.dark_threshold <= check.brightness <= critic.bright_threshold:
        notes.append(f"badly exposed (mean brightness {check.brightness:.2f})")
    return notes


def read_anchor(run_dir: Path) -> Anchor | None:
    """The run's anchor when anchor.json and anchor.png agree (sha256), else None."""
    run_dir = Path(run_dir)
    record = read_json_object(run_dir / ANCHOR_INFO)
    path = run_dir / ANCHOR_IMAGE
    if record is None or not path.is_file():
        return None
    sha = sha256_file(path)
    if sha != record.get("sha256"):
        return None
    return Anchor(path=path, sha256=sha, info=record)


def require_anchor(run_dir: Path) -> Anchor:
    """The run's anchor, or the error that says to make it first."""
    anchor = read_anchor(run_dir)
    if anchor is None:
        raise ZireliaError(
            f'[dataset] identity = "anchor" but {run_dir} holds no valid {ANCHOR_IMAGE} / {ANCHOR_INFO}',
            hint="run `zirelia dataset CONFIG` first: it makes the anchor before drawing any image",
        )
    return anchor


def reusable_anchor(run_dir: Path, key: dict[str, Any]) -> Anchor | None:
    """The existing anchor when it was made for `key` (same photo, or same prompt, seed and model)."""
    anchor = read_anchor(run_dir)
    return anchor if anchor is not None and anchor.info.get("key") == key else None


def save_anchor(run_dir: Path, image: Any, record: dict[str, Any]) -> Anchor:
    """Write anchor.png, then anchor.json with its sha256 (a kill between the two leaves no valid anchor)."""
    path = atomic_write_bytes(Path(run_dir) / ANCHOR_IMAGE, png_bytes(image))
    sha = sha256_file(path)
    record = {**record, "file": ANCHOR_IMAGE, "sha256": sha}
    atomic_write_json(Path(run_dir) / ANCHOR_INFO, record)
    return Anchor(path=path, sha256=sha, info=record)


def _refuse(path: Path, message: str, hint: str) -> ZireliaError:
    return ZireliaError(f"[dataset] anchor_image {path}: {message}", hint=hint)


PHOTO_HINT = (
    "use a portrait that shows the persona's face alone, frontal, well lit and at least [curate] min_face_size "
    "pixels wide (crop group photos); nothing was generated"
)


def crop_box(width: int, height: int, face: DetectedFace) -> tuple[int, int, int, int]:
    """A square around the face (FACE_CROP_FACTOR face sizes wide, at most the photo's shorter side),
    centred on it and moved inside the photo."""
    side = min(width, height, max(round(face.size * FACE_CROP_FACTOR), 1))
    centre_x = (face.box[0] + face.box[2]) / 2
    centre_y = (face.box[1] + face.box[3]) / 2
    left = int(min(max(round(centre_x - side / 2), 0), width - side))
    top = int(min(max(round(centre_y - side / 2), 0), height - side))
    return left, top, left + side, top + side


def anchor_from_photo(config: ZireliaConfig, run_dir: Path, embedder: FaceEmbedder) -> Anchor:
    """Check the user's photo (one face, large enough), copy it into the run directory, crop it square around
    the face at [dataset] resolution and check the result again; refuse with the reason otherwise."""
    from PIL import Image

    source = anchor_photo_path(config)
    try:
        rgb = load_rgb(source)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise _refuse(source, f"cannot be read as an image ({error})", "give a JPEG or PNG photo") from None
    check = check_portrait(config, rgb, embedder.detect(rgb))
    if not check.ok:
        detail = {
            "no_face": f"no face found by the {embedder.name} face detector",
            "multiple_faces": f"{check.faces} faces found: the anchor must show the persona alone",
            "low_detection_score": "the face detector is unsure of the only face found",
            "face_too_small": f"the face is {check.face.size if check.face else 0} px, under [curate] "
            f"min_face_size {config.curate.min_face_size} px",
        }[check.verdict]
        raise _refuse(source, detail, PHOTO_HINT)
    assert check.face is not None  # check.ok
    resolution = config.dataset.resolution
    box = crop_box(rgb.shape[1], rgb.shape[0], check.face)
    portrait = Image.fromarray(rgb).crop(box).resize((resolution, resolution), Image.LANCZOS)
    prepared = np.asarray(portrait)
    final = check_portrait(config, prepared, embedder.detect(prepared))
    if not final.ok:
        raise _refuse(
            source,
            f"after cropping to {resolution}x{resolution} px: {VERDICT_TEXT[final.verdict]}"
            + (f" ({final.face.size} px)" if final.face is not None else ""),
            f"raise [dataset] resolution (now {resolution}) or use a photo with a larger face; nothing was generated",
        )
    copy = Path(ANCHOR_DIR) / f"photo{source.suffix.lower() or '.jpg'}"
    link_or_copy(source, Path(run_dir) / copy)
    for note in portrait_warnings(config, final):
        warn(escape(f"anchor photo {source}: {note}; the images inherit it"))
    anchor = save_anchor(
        run_dir,
        portrait,
        {
            "key": photo_key(config),
            "source": "photo",
            "photo": str(source.resolve()),
            "copy": copy.as_posix(),
            "crop": list(box),
            "resolution": resolution,
            "embedder": embedder.name,
            "check": final.to_record(),
            "photo_check": check.to_record(),
        },
    )
    info(
        escape(
            f"anchor: {source} ({final.face.size if final.face else 0} px face after cropping to {resolution} px) "
            f"-> {anchor.path}"
        )
    )
    return anchor


def anchor_photo_path(config: ZireliaConfig) -> Path:
    """`[dataset] anchor_image`, which must exist."""
    source = Path(config.dataset.anchor_image or "").expanduser()
    if not source.is_file():
        raise ConfigError(
            f"[dataset] anchor_image {source}: no such file",
            hint="relative paths are read from the directory you run zirelia from; use an absolute path to be sure",
        )
    return source


def photo_key(config: ZireliaConfig) -> dict[str, Any]:
    """What a photo anchor depends on: the photo's bytes and the resolution."""
    return {
        "source": "photo",
        "sha256": sha256_file(anchor_photo_path(config)),
        "resolution": config.dataset.resolution,
    }
