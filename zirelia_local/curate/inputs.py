"""The stage's inputs: the generated records of the manifest, or a folder of the user's own images
(`zirelia curate --images DIR`) brought into the run directory as manifest records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes, link_or_copy, png_bytes, sha256_file, write_jsonl
from zirelia_local.common.images import IMAGE_SUFFIXES
from zirelia_local.common.manifest import MANIFEST_NAME, Manifest
from zirelia_local.curate.verdicts import Decision

INPUT_DIR = "input"
INPUT_ORIGIN = "images_dir"


def generated_records(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's generated images, in plan order."""
    return sorted(manifest.generated(), key=lambda record: record.get("index", 0))


def import_images(config: ZireliaConfig, run_dir: Path, folder: Path) -> tuple[Manifest, list[Decision]]:
    """Bring a folder of existing images into the run directory as manifest records (origin `images_dir`).

    Each image becomes `input/input_NNNNN<suffix>`: a hard link (no copy) when it is an upright RGB/grey JPEG
    or PNG, otherwise a normalised PNG (EXIF rotation applied, RGB). Its caption is the trigger word and the
    class phrase, since there are no plan axes. Files that cannot be decoded are skipped, with a decision.
    """
    from PIL import Image, ImageOps

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ZireliaError(f"--images {folder}: no such folder")
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ZireliaError(
            f"--images {folder}: no images in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            hint="sub-folders are not searched; put the photos directly in the folder",
        )
    manifest = Manifest(run_dir)
    planned = [record for record in manifest if record.get("origin") != INPUT_ORIGIN]
    if planned:
        raise ZireliaError(
            f"{run_dir} already holds a generated dataset ({len(planned)} image record(s)); `--images` curates "
            "your own folder in a run directory of its own",
            hint=f"add --run-dir runs/{config.persona.trigger_word}-photos (or any new folder)",
        )
    # A previous --images run is replaced as a whole; the face cache (by sha256) keeps its work.
    input_dir = run_dir / INPUT_DIR
    if input_dir.is_dir():
        for path in input_dir.iterdir():
            if path.is_file():
                path.unlink()
    caption = f"{config.persona.trigger_word}, a photo of {config.persona.caption_phrase}"
    records, skipped = [], []
    for path in files:
        try:
            with Image.open(path) as opened:
                upright = opened.getexif().get(0x0112, 1) == 1  # EXIF orientation
                linkable = opened.format in ("JPEG", "PNG") and opened.mode in ("RGB", "L") and upright
                size = opened.size
                image = None if linkable else ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped.append(Decision(id=None, file=str(path), round=0, reason="unreadable", source=str(path)))
            continue
        image_id = f"input_{len(records):05d}"
        if image is None:
            target = input_dir / f"{image_id}{path.suffix.lower()}"
            link_or_copy(path, target)
        else:
            target = input_dir / f"{image_id}.png"
            atomic_write_bytes(target, png_bytes(image))
            size = image.size
        records.append(
            {
                "id": image_id,
                "index": len(records),
                "round": 0,
                "file": f"{INPUT_DIR}/{target.name}",
                "source": str(path.resolve()),
                "origin": INPUT_ORIGIN,
                "prompt": None,
                "caption": caption,
                "seed": None,
                "axes": {},
                "width": size[0],
                "height": size[1],
                "status": "generated",
                "sha256": sha256_file(target),
            }
        )
    write_jsonl(run_dir / MANIFEST_NAME, records)
    info(
        f"imported {len(records)} image(s) from {folder} into {input_dir}"
        + (f", {len(skipped)} unreadable" if skipped else "")
    )
    return Manifest(run_dir), skipped
