"""Curation: keep one consistent identity in the training set.

FLUX.1-dev draws a different face each time, even with the same descriptors, so the raw synthetic set is a
crowd of lookalikes. This stage, run after the dataset stage:

1. finds the faces in every image (one embedder call per batch, embeddings cached by sha256 in
   `faces.safetensors`, so reruns and top-up rounds only embed new images);
2. rejects images with no face, a face the detector is unsure of, more than one face, or a face too small;
3. finds the persona's identity among the rest: the largest cohesive cluster (in the spirit of "The Chosen
   One", Avrahami et al. 2024) -- the image with the most neighbours within the same-person threshold seeds
   it, its neighbourhood's centroid is refined until the set within the threshold stops changing -- or, when
   `[curate] reference_images` is set, the centroid of the user's photos, or, for an identity-anchored
   dataset (`[dataset] identity = "anchor"`), the anchor portrait's face;
4. keeps the images within the threshold of that reference identity, saved as `identity.safetensors`;
5. if fewer than the target remain, generates more with new seeds (the next entries of the same plan) and
   repeats, up to `top_up_rounds` rounds per run directory; below the minimum it stops with the numbers.

Every decision goes to `curation.jsonl` (one line per input image) and into the image's manifest record
(`curation`), with a summary in `curation.json` (with the set's identity cohesion, `cohesion.py`) and a
contact sheet `contact_sheet.png`; then `train_data/` is rebuilt from the kept images. In `mode = "record"`
every image is scored and logged but none is dropped.

The steps live beside this module: `scan` (faces and their cache), `verdicts` (checks, identity, decisions),
`inputs` (`--images DIR`), `topup` (more images), `outputs` (files written, shortfall error), `gate`
(the check `zirelia train` runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.manifest import Manifest
from zirelia_local.common.processes import is_distributed, is_main_process
from zirelia_local.common.rundir import prepare_run_dir
from zirelia_local.curate.cohesion import identity_cohesion
from zirelia_local.curate.inputs import INPUT_ORIGIN, generated_records, import_images
from zirelia_local.curate.outputs import CurateResult, shortfall_error, write_outputs
from zirelia_local.curate.scan import FaceCache, scan_faces
from zirelia_local.curate.topup import (
    TopUpGenerator,
    end_top_ups,
    finish_interrupted_top_up,
    follow_top_ups,
    run_top_up_round,
)
from zirelia_local.curate.verdicts import (
    REASON_OK,
    REASON_TEXT,
    Decision,
    IdentityChoice,
    anchor_identity,
    check_reference_images,
    count_reasons,
    decide,
    reference_identity,
)
from zirelia_local.dataset import ANCHOR_IMAGE, read_anchor
from zirelia_local.faces import FaceEmbedder, load_embedder


def run_curate(
    config: ZireliaConfig,
    images_dir: Path | None = None,
    *,
    embedder: FaceEmbedder | None = None,
    pipe: Any = None,
) -> CurateResult | None:
    """Curate the generated set (or the images in `images_dir`) down to one identity; see the module doc.

    `embedder` and `pipe` reuse an already loaded face embedder or FLUX pipeline (tests, notebooks). Under a
    launch of several processes the main process curates (faces are judged there: a few milliseconds an
    image) and the others draw their share of each top-up round with it; they return None.
    """
    if not is_distributed():
        return _curate(config, images_dir, embedder=embedder, pipe=pipe)
    if not is_main_process():
        follow_top_ups(config, prepare_run_dir(config), pipe)
        return None
    try:
        result = _curate(config, images_dir, embedder=embedder, pipe=pipe)
    except BaseException:
        end_top_ups(failed=True)
        raise
    end_top_ups(failed=False)
    return result


def _curate(
    config: ZireliaConfig, images_dir: Path | None, *, embedder: FaceEmbedder | None, pipe: Any
) -> CurateResult:
    curate = config.curate
    run_dir = prepare_run_dir(config)
    if curate.reference_images:
        check_reference_images(curate.reference_images)  # before the import and the embedder: fail fast
    skipped: list[Decision] = []
    if images_dir is not None:
        manifest, skipped = import_images(config, run_dir, Path(images_dir))
    else:
        manifest = Manifest(run_dir)
        if any(record.get("origin") == INPUT_ORIGIN for record in manifest):
            raise ZireliaError(
                f"{run_dir} holds images imported with --images, not a generated dataset",
                hint="rerun with the same --images DIR, or curate the generated set in another run directory",
            )
    generator = TopUpGenerator(config, pipe)
    if images_dir is None and curate.mode == "enforce":
        finish_interrupted_top_up(config, run_dir, manifest, generator)
    records = generated_records(manifest)
    if not records and not skipped:
        raise ZireliaError(f"no generated images in {run_dir}", hint="run `zirelia dataset CONFIG` first")

    embedder = embedder or load_embedder(curate)
    threshold = curate.threshold if curate.threshold is not None else embedder.threshold
    anchor: IdentityChoice | None = None
    if curate.reference_images:
        anchor = reference_identity(embedder, curate.reference_images, curate, threshold)
    elif config.dataset.identity == "anchor" and images_dir is None:
        if read_anchor(run_dir) is None:
            raise ZireliaError(
                f'[dataset] identity = "anchor" but {run_dir} has no valid {ANCHOR_IMAGE}',
                hint="run `zirelia dataset CONFIG` first (it makes the anchor)",
            )
        anchor = anchor_identity(embedder, run_dir / ANCHOR_IMAGE, curate, threshold)
    cache = FaceCache(run_dir, embedder.model_id)
    target, minimum = config.curate_target, config.curate_minimum
    can_top_up = images_dir is None and curate.mode == "enforce"
    info(
        f"curating {len(records)} image(s) with {embedder.name} (same person: distance <= {threshold:.2f}), "
        f"mode {curate.mode}, target {target}"
    )
    refused: dict[str, str] = {}
    while True:
        faces = scan_faces(embedder, [(r["sha256"], run_dir / r["file"]) for r in records], cache, refused)
        decisions, identity = decide(embedder, records, faces, curate, threshold, anchor, refused)
        passing = sum(1 for decision in decisions if decision.reason == REASON_OK)
        rounds_done = max((int(r.get("round", 0)) for r in records), default=0)
        if not can_top_up or passing >= target or rounds_done >= curate.top_up_rounds:
            break
        run_top_up_round(
            config, run_dir, manifest, generator, passing=passing, scanned=len(records), round_index=rounds_done + 1
        )
        records = generated_records(manifest)

    usable = [
        (d.id or d.file, d.face.embedding)
        for d in decisions
        if d.face is not None and d.reason in (REASON_OK, "wrong_identity")
    ]
    cohesion = identity_cohesion(
        embedder,
        usable,
        len(records),
        threshold,
        top_up_rounds=max((int(r.get("round", 0)) for r in records), default=0),
        target_reached=passing >= target,
    )
    decisions = decisions + skipped
    result = CurateResult(
        run_dir=run_dir,
        mode=curate.mode,
        embedder=embedder.name,
        threshold=threshold,
        decisions=decisions,
        identity=identity,
        target=target,
        minimum=minimum,
        rounds=max((int(r.get("round", 0)) for r in records), default=0),
        counts=count_reasons(decisions),
        cohesion=cohesion,
    )
    write_outputs(config, run_dir, manifest, result)
    summary = ", ".join(f"{REASON_TEXT[k]} {v}" for k, v in result.counts.items() if v and k != REASON_OK)
    info(
        f"curation: {len(result.passing)} of {len(decisions)} image(s) are the persona"
        + (f" ({summary})" if summary else "")
        + f"; {len(result.kept)} go on to training ({result.training_set.folder}); contact sheet {result.contact_sheet}"
    )
    distance = "-" if cohesion.mean_pairwise_distance is None else f"{cohesion.mean_pairwise_distance:.2f}"
    info(
        f"identity cohesion: mean pairwise face distance {distance}, {cohesion.largest_cluster_share:.0%} of "
        f"{cohesion.images} image(s) in the largest identity cluster, {cohesion.top_up_rounds} top-up round(s)"
    )
    if curate.mode == "record":
        if result.passing != result.kept:
            warn(
                escape(
                    f'[curate] mode = "record": nothing was dropped, although {len(result.kept) - len(result.passing)} image(s) failed the checks'
                )
            )
        return result
    if len(result.kept) < minimum:
        raise shortfall_error(config, manifest, result, Path(images_dir) if images_dir is not None else None)
    if len(result.kept) < target:
        warn(
            f"curation kept {len(result.kept)} image(s), fewer than the target {target} (minimum {minimum}): training goes on"
        )
    return result
