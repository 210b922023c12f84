"""The training gate: `zirelia train` refuses a set that curation rejected."""

from __future__ import annotations

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import read_json_object
from zirelia_local.common.manifest import MANIFEST_NAME, Manifest
from zirelia_local.curate.outputs import CONTACT_SHEET, CURATION_LOG, CURATION_SUMMARY


def check_curation_for_training(config: ZireliaConfig, *, dry_run: bool = False) -> None:
    """Refuse to train on nothing or on a set that curation rejected; warn when it was never curated.

    The curation stage raises when it keeps too few images, but `zirelia train` can run alone afterwards,
    and `train_data/` then still holds the few it kept: training on them would quietly make a weak LoRA.
    """
    run_dir = config.run_dir
    path = run_dir / CURATION_SUMMARY
    summary = read_json_object(path)
    if summary is None:
        if not dry_run and not Manifest(run_dir).generated():
            raise ZireliaError(
                f"nothing to train on in {run_dir}: it holds no generated image ({MANIFEST_NAME} is missing or empty)",
                hint="run `zirelia dataset CONFIG` (and `zirelia curate CONFIG`) first, or the whole job with "
                "`python -m zirelia_local.train CONFIG`",
            )
        if config.curate.mode == "enforce":
            warn(
                escape(
                    f"{path.name} not found in {run_dir}: training on the uncurated set (run `zirelia curate "
                    "CONFIG` first to keep one identity)"
                )
            )
        return
    if summary.get("mode") == "record" and config.curate.mode == "enforce":
        message = f'{path} was written in [curate] mode = "record" (nothing dropped), but the config now says "enforce"'
        hint = "rerun `zirelia curate CONFIG` to drop the images that are not the persona"
    elif summary.get("ok", True):
        return
    else:
        message = (
            f"curation kept {summary.get('kept')} image(s) in {run_dir}, fewer than the minimum "
            f"{summary.get('minimum')}: training on them would make a weak LoRA"
        )
        hint = (
            f"see {run_dir / CONTACT_SHEET} and {CURATION_LOG}; rerun `zirelia curate CONFIG` with more "
            "[curate] top_up_rounds, a looser threshold or reference_images, or lower [curate] min_count"
        )
    if dry_run:
        warn(escape(f"{message}; {hint}"))
        return
    raise ZireliaError(message, hint=hint)
