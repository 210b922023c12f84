"""What curation leaves in the run directory: `curation.jsonl` (one verdict per image, mirrored into the
manifest), `curation.json` (the summary), `identity.safetensors`, `contact_sheet.png` and `train_data/`; and
the error that explains a shortfall."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.contact_sheet import SheetItem, contact_sheet
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_json, write_jsonl
from zirelia_local.common.manifest import Manifest
from zirelia_local.common.paths import display_path
from zirelia_local.curate.cohesion import Cohesion
from zirelia_local.curate.verdicts import REASON_OK, REASON_TEXT, Decision, IdentityChoice
from zirelia_local.dataset import TrainingSet, write_training_set
from zirelia_local.faces.identity import IDENTITY_NAME, ReferenceIdentity, save_identity

CURATION_LOG = "curation.jsonl"
CURATION_SUMMARY = "curation.json"
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class CurateResult:
    """What one curation run decided, and where it wrote it."""

    run_dir: Path
    mode: str
    embedder: str
    threshold: float
    decisions: list[Decision]
    identity: IdentityChoice | None
    target: int
    minimum: int
    rounds: int
    counts: dict[str, int] = field(default_factory=dict)
    cohesion: Cohesion | None = None
    contact_sheet: Path | None = None
    training_set: TrainingSet | None = None

    @property
    def kept(self) -> list[Decision]:
        """Images that go on to training."""
        return [d for d in self.decisions if d.kept]

    @property
    def passing(self) -> list[Decision]:
        """Images enforce mode keeps (in record mode: the ones it would keep)."""
        return [d for d in self.decisions if d.reason == REASON_OK]


def _label(decision: Decision) -> str:
    """A thumbnail's caption: the image, its distance, the verdict with its reason, and why an unreadable
    image was refused. A file name is shown escaped (a newline in it must not add a line)."""
    name = decision.id or display_path(Path(decision.file).name)
    distance = "" if decision.distance is None else f" d={decision.distance:.2f}"
    verdict = "kept" if decision.kept else "rejected"
    label = f"{name}{distance}\n{verdict}: {REASON_TEXT[decision.reason]}"
    return label + (f"\n{decision.detail}" if decision.detail else "")


def _write_contact_sheet(config: ZireliaConfig, run_dir: Path, result: CurateResult) -> Path:
    """Every image with its verdict: the same-identity ones first, each group closest first."""

    def order(decision: Decision) -> tuple[int, float, str]:
        return (
            0 if decision.reason == REASON_OK else 1,
            decision.distance if decision.distance is not None else 9.0,
            decision.file,
        )

    items = []
    for decision in sorted(result.decisions, key=order):
        path = Path(decision.file) if decision.id is None else run_dir / decision.file
        items.append(
            SheetItem(
                path=path,
                label=_label(decision),
                ok=decision.reason == REASON_OK,
                box=decision.face.box if decision.face else None,
            )
        )
    title = (
        f"{config.persona.name}: {len(result.passing)} of {len(result.decisions)} image(s) are the identity "
        f"({result.embedder}, distance <= {result.threshold:.2f}; mode {result.mode}; green = same identity)"
    )
    thumb = 160 if len(items) <= 200 else 96
    return contact_sheet(items, run_dir / CONTACT_SHEET, thumb=thumb, columns=8, title=title)


def write_outputs(config: ZireliaConfig, run_dir: Path, manifest: Manifest, result: CurateResult) -> None:
    """Write the log, the manifest's `curation` fields, the identity, the contact sheet, the summary and
    `train_data/`; sets `result.contact_sheet` and `result.training_set`."""
    write_jsonl(run_dir / CURATION_LOG, [decision.to_record(result.mode) for decision in result.decisions])
    for decision in result.decisions:
        if decision.id is not None and decision.id in manifest:
            record = decision.to_record(result.mode)
            mirror = {
                key: record[key]
                for key in ("kept", "reason", "distance", "faces", "face_size", "detection_score", "mode")
            }
            manifest.upsert({"id": decision.id, "curation": mirror})
    manifest.save()
    identity = result.identity
    if identity is not None:
        save_identity(
            run_dir,
            ReferenceIdentity(
                embedding=identity.embedding, embedder=result.embedder, source=identity.source, count=identity.count
            ),
        )
    else:
        (run_dir / IDENTITY_NAME).unlink(missing_ok=True)  # never leave an identity that no longer holds
    result.contact_sheet = _write_contact_sheet(config, run_dir, result)
    atomic_write_json(
        run_dir / CURATION_SUMMARY,
        {
            "mode": result.mode,
            "embedder": result.embedder,
            "threshold": result.threshold,
            "identity": None
            if identity is None
            else {"source": identity.source, "count": identity.count, "seed": identity.seed, "file": IDENTITY_NAME},
            "images": len(result.decisions),
            "kept": len(result.kept),
            "same_identity": len(result.passing),
            "target": result.target,
            "minimum": result.minimum,
            "top_up_rounds": result.rounds,
            "counts": result.counts,
            "cohesion": result.cohesion.to_record() if result.cohesion is not None else None,
            "ok": result.mode == "record" or len(result.kept) >= result.minimum,
        },
    )
    result.training_set = write_training_set(config, run_dir)


def shortfall_error(
    config: ZireliaConfig, manifest: Manifest, result: CurateResult, images_dir: Path | None
) -> ZireliaError:
    """The error for a run that kept fewer than the minimum: the count per reason, and what to change."""
    counts = result.counts
    numbers = (
        f"planned {len(manifest)}, generated {len(manifest.generated())}, no face {counts['no_face']}, "
        f"low detection score {counts['low_detection_score']}, more than one face {counts['multiple_faces']}, "
        f"face too small {counts['face_too_small']}, wrong identity {counts['wrong_identity']}"
        + (f", unreadable {counts['unreadable']}" if counts["unreadable"] else "")
        + f"; kept {len(result.kept)}, needed {result.minimum}"
    )
    if images_dir is not None:
        message = f"curation of {images_dir} kept too few images to train on: {numbers}"
        hint = (
            f"add more photos of the persona to {images_dir}, or lower [curate] min_count; see "
            f"{result.run_dir / CONTACT_SHEET} and {CURATION_LOG} for each image's verdict"
        )
    else:
        message = f"curation kept too few images after {result.rounds} top-up round(s): {numbers}"
        hint = (
            f"see {result.run_dir / CONTACT_SHEET} and {CURATION_LOG} for each verdict. If the images show no "
            "faces, the generator is not drawing people (check [generator] model). Otherwise raise [curate] "
            f"top_up_rounds (now {config.curate.top_up_rounds}) to generate more, loosen [curate] threshold "
            f"(now {result.threshold:.2f}), give [curate] reference_images, or lower [curate] min_count"
        )
    return ZireliaError(message, hint=hint)
