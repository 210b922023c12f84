"""Stage 2, curation: keep one consistent identity in the training set, topping up when too few remain."""

from zirelia_local.curate.gate import check_curation_for_training
from zirelia_local.curate.stage import CurateResult, run_curate
from zirelia_local.curate.verdicts import check_reference_images

__all__ = ["CurateResult", "check_curation_for_training", "check_reference_images", "run_curate"]
