"""The doctor's row (`Check`), its three constructors, and the vocabulary every doctor module shares: the
stage names a subset of checks is chosen by, and the byte units its details are written in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from zirelia_local.common.config import ZireliaConfig

Status = Literal["ok", "warn", "FAIL"]
# The pipeline's stages, named as the CLI names them (`zirelia dataset`, ... `zirelia report`), in run order.
Stage = Literal["dataset", "curate", "train", "critic", "report"]
STAGES: tuple[Stage, ...] = ("dataset", "curate", "train", "critic", "report")
# Stages that load a model onto a device; the report only reads files.
MODEL_STAGES: frozenset[Stage] = frozenset({"dataset", "curate", "train", "critic"})
# Stages that use the face embedder: curation keeps one identity, the critic scores it.
FACE_STAGES: frozenset[Stage] = frozenset({"curate", "critic"})

GIB = 1024**3  # GPU memory is sold and reported in binary units
GB = 1000**3  # disks and downloads in decimal ones


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        """Whether this row alone means the configured run cannot start."""
        return self.status == "FAIL"


def ok(name: str, detail: str) -> Check:
    """A passing row."""
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    """A row the run can start with, but that the user should read."""
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    """A row that stops the configured run; the fix is required, so every failure says what to do."""
    return Check(name, "FAIL", detail, fix)


def selected_stages(stages: Iterable[str] | None) -> frozenset[Stage]:
    """`stages` checked against the stage names (None: all of them; one name alone: that stage), so a typo
    fails loudly instead of silently checking nothing."""
    if stages is None:
        return frozenset(STAGES)
    chosen = frozenset([stages] if isinstance(stages, str) else stages)  # not the letters of "train"
    unknown = sorted(chosen - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
    return cast(frozenset[Stage], chosen)  # every member was just checked against STAGES


def generator_stages(config: ZireliaConfig) -> frozenset[Stage]:
    """The stages that load `[generator] model`: the dataset draws with it, curation's top-ups and the critic
    render with it, and the diffusers training backend trains it (kohya loads the `[train]` files instead)."""
    stages: set[Stage] = {"dataset", "curate", "critic"}
    if config.train.backend == "diffusers":
        stages.add("train")
    return frozenset(stages)
