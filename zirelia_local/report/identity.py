"""The report's identity section: the anchor portrait of an identity-anchored dataset (with the candidates it
was chosen from) and the identity-cohesion figures curation measured, read from `anchor.json` and
`curation.json`. Like `sections`, plain data for the template; None where the file is not there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zirelia_local.common.files import read_json_object
from zirelia_local.dataset import ANCHOR_IMAGE, ANCHOR_INFO
from zirelia_local.report.render import thumbnail_uri

CURATION_SUMMARY = "curation.json"
ANCHOR_SIDE = 256


def _check(record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {}
    face = record.get("face") or {}
    return {
        "verdict": record.get("verdict_text") or record.get("verdict") or "-",
        "ok": record.get("verdict") == "ok",
        "faces": record.get("faces"),
        "face_size": face.get("size"),
        "sharpness": record.get("sharpness"),
        "brightness": record.get("brightness"),
    }


def anchor(run_dir: Path) -> dict[str, Any] | None:
    """The anchor portrait (a data URI), where it came from, its checks, and the drawn candidates; None when the
    dataset was not identity-anchored (no anchor.json)."""
    record = read_json_object(run_dir / ANCHOR_INFO)
    if record is None:
        return None
    source = record.get("source")
    if source == "photo":
        origin = f"your photo {record.get('photo')}, cropped square around the face to {record.get('resolution')} px"
    else:
        origin = (
            f"drawn by {record.get('model')} (seed {record.get('seed')}), the best of "
            f"{len(record.get('candidates') or [])} portrait(s): {record.get('prompt')}"
        )
    return {
        "file": ANCHOR_IMAGE,
        "image": thumbnail_uri(run_dir / ANCHOR_IMAGE, ANCHOR_SIDE),
        "source": source,
        "origin": origin,
        "embedder": record.get("embedder"),
        "check": _check(record.get("check")),
        "candidates": [
            {
                "file": item.get("file"),
                "seed": item.get("seed"),
                "chosen": bool(item.get("chosen")),
                "thumbnail": thumbnail_uri(run_dir / str(item.get("file"))),
                **_check(item),
            }
            for item in record.get("candidates") or []
        ],
    }


def cohesion(run_dir: Path) -> dict[str, Any] | None:
    """curation.json's identity-cohesion figures, with the embedder and threshold they are on; None before
    curation (or from a curation that did not measure them)."""
    summary = read_json_object(run_dir / CURATION_SUMMARY)
    if summary is None or not summary.get("cohesion"):
        return None
    figures = summary["cohesion"]
    return {
        **{
            key: figures.get(key)
            for key in (
                "images",
                "faces",
                "mean_pairwise_distance",
                "largest_cluster",
                "largest_cluster_share",
                "top_up_rounds",
                "target_reached",
            )
        },
        "embedder": summary.get("embedder"),
        "threshold": summary.get("threshold"),
        "identity_source": (summary.get("identity") or {}).get("source"),
    }
