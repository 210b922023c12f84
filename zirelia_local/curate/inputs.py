"""The stage's inputs: the generated records of the manifest, or a folder of the user's own images
(`zirelia curate --images DIR`) brought into the run directory as manifest records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, warn
from zirelia_local.common.errors import UsageError, ZireliaError
from zirelia_local.common.files import atomic_write_bytes, link_or_copy, png_bytes, sha256_file, write_jsonl
from zirelia_local.common.images import IMAGE_SUFFIXES, ImageRefused, open_image, read_header
from zirelia_local.common.manifest import MANIFEST_NAME, Manifest
from zirelia_local.common.paths import describe_os_error, display_path, path_problem
from zirelia_local.curate.outputs import CURATION_LOG
from zirelia_local.curate.verdicts import Decision

INPUT_DIR = "input"
INPUT_ORIGIN = "images_dir"
MAX_LISTED = 10  # unreadable images named on the console; curation.jsonl has every one


def generated_records(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's generated images, in plan order."""
    return sorted(manifest.generated(), key=lambda record: record.get("index", 0))


def import_images(config: ZireliaConfig, run_dir: Path, folder: Path) -> tuple[Manifest, list[Decision]]:
    """Bring a folder of existing images into the run directory as manifest records (origin `images_dir`).

    Each image becomes `input/input_NNNNN<suffix>`: a hard link (no copy) when it is an upright RGB/grey JPEG
    or PNG, otherwise a normalised PNG (EXIF rotation applied, RGB). Its caption is the trigger word and the
    class phrase, since there are no plan axes. A file the image opener refuses (not an image, truncated, too
    large) is skipped, with a decision that gives the reason.
    """
    folder = Path(folder).expanduser()
    files = _image_files(folder)
    manifest = Manifest(run_dir)
    planned = [record for record in manifest if record.get("origin") != INPUT_ORIGIN]
    if planned:  # the command line asks for two datasets in one run directory: a usage error (exit 2)
        raise UsageError(
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
            header = read_header(path)
            linkable = header.format in ("JPEG", "PNG") and header.mode in ("RGB", "L") and header.upright
            size = header.size
            image = None if linkable else open_image(path)
        except ImageRefused as refused:
            where = str(path.absolute())
            skipped.append(
                Decision(id=None, file=where, round=0, reason="unreadable", source=where, detail=refused.reason)
            )
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
        escape(
            f"imported {len(records)} image(s) from {display_path(folder)} into {input_dir}"
            + (f", {len(skipped)} unreadable" if skipped else "")
        )
    )
    for decision in skipped[:MAX_LISTED]:
        warn(escape(f"{display_path(decision.file)}: {decision.detail}"))
    if len(skipped) > MAX_LISTED:
        warn(f"... and {len(skipped) - MAX_LISTED} more unreadable image(s): see {CURATION_LOG}")
    return Manifest(run_dir), skipped


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` (by suffix), sorted; a UsageError when it is not a folder."""
    problem = path_problem(folder, "folder")
    if problem is not None:
        raise UsageError(
            f"--images {display_path(folder)} {problem}",
            hint="give the folder that holds the photos (to curate one photo, put it in a folder of its own)",
        )
    try:
        files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as error:
        raise UsageError(
            f"--images {display_path(folder)}: cannot list the folder ({describe_os_error(error)})",
            hint="check its permissions, or copy the photos to a folder you can read",
        ) from None
    if not files:
        raise ZireliaError(
            f"--images {display_path(folder)}: no images in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            hint="sub-folders are not searched; put the photos directly in the folder",
        )
    return files
