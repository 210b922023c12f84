"""The dataset plan: which prompt and seed each image gets.

Every image takes one value of each axis (lighting, expression, setting, outfit, angle). Values are
chosen greedily so that (1) within each axis, usage counts never differ by more than one at any point of
the sequence, and (2) among the least-used values, the one that has co-occurred least with the values
already chosen for this image wins, which spreads the pairwise combinations instead of walking the first
N cells of a cartesian product. Ties break by a permutation seeded from the config's seed.

The plan is an infinite deterministic sequence: entry i depends only on the config, so curation's top-up
rounds simply ask for entries count, count+1, ... and get fresh, still-balanced images.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from zirelia_local.common.config import DatasetConfig, PersonaConfig

PLAN_NAME = "plan.jsonl"
# Axis name in prompts/captions -> field of DatasetConfig holding its values.
AXES: tuple[tuple[str, str], ...] = (
    ("lighting", "lighting"),
    ("expression", "expressions"),
    ("setting", "settings"),
    ("outfit", "outfits"),
    ("angle", "angles"),
)
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class PlannedImage:
    index: int
    id: str
    seed: int
    axes: dict[str, str]
    prompt: str
    caption: str
    fixed_seed: bool = field(default=False)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def image_id(index: int) -> str:
    return f"img_{index:05d}"


def mix32(value: int) -> int:
    """A bijective 32-bit integer hash (lowbias32): distinct inputs give distinct seeds."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * 0x7FEB352D) & _MASK32
    value ^= value >> 15
    value = (value * 0x846CA68B) & _MASK32
    value ^= value >> 16
    return value


def _seeds(base_seed: int, fixed: int) -> Iterator[int]:
    """The first `fixed` seeds equal the base seed; every later one is distinct from all before it."""
    used = {base_seed}
    index = 0
    while True:
        if index < fixed:
            yield base_seed
        else:
            attempt = 0
            while True:
                candidate = mix32(base_seed + index + attempt * 0x9E3779B9)
                if candidate not in used:
                    break
                attempt += 1
            used.add(candidate)
            yield candidate
        index += 1


def _axis_choices(dataset: DatasetConfig, fixed: int) -> Iterator[dict[str, int]]:
    """Yield, per image, the index of the chosen value on each axis (see module docstring)."""
    values = {axis: getattr(dataset, attr) for axis, attr in AXES}
    names = [axis for axis, _ in AXES]
    usage = {axis: [0] * len(values[axis]) for axis in names}
    pairs: dict[tuple[str, int, str, int], int] = {}
    rng = random.Random(f"zirelia-plan:{dataset.seed}")
    index = 0
    while True:
        chosen: dict[str, int] = {}
        # Rotate which axis is chosen first, so no axis always gets the unconstrained pick.
        start = index % len(names)
        for axis in names[start:] + names[:start]:
            if axis == "angle" and index < fixed:
                chosen[axis] = 0  # the fixed-seed images share a front-facing framing
                continue
            lowest = min(usage[axis])
            candidates = [v for v, used in enumerate(usage[axis]) if used == lowest]
            rng.shuffle(candidates)
            chosen[axis] = min(
                candidates,
                key=lambda v: sum(pairs.get((axis, v, other, w), 0) for other, w in chosen.items()),
            )
        for axis, v in chosen.items():
            usage[axis][v] += 1
        for (a, v), (b, w) in combinations(sorted(chosen.items()), 2):
            pairs[(a, v, b, w)] = pairs.get((a, v, b, w), 0) + 1
            pairs[(b, w, a, v)] = pairs.get((b, w, a, v), 0) + 1
        yield chosen
        index += 1


def plan_images(
    persona: PersonaConfig, dataset: DatasetConfig, *, start: int = 0, count: int | None = None
) -> list[PlannedImage]:
    """Entries [start, start + count) of the plan (count defaults to the rest of dataset.count)."""
    if count is None:
        count = max(dataset.count - start, 0)
    stop = start + count
    values = {axis: getattr(dataset, attr) for axis, attr in AXES}
    # With an anchor, the anchor is the one face every image starts from: each image gets its own seed, and its
    # prompt is the Kontext instruction that edits the anchor into the planned scene.
    anchored = dataset.identity == "anchor"
    fixed = 0 if anchored else dataset.fixed_seed_images
    template = dataset.instruction_template if anchored else dataset.prompt_template
    planned: list[PlannedImage] = []
    for index, (choice, seed) in enumerate(
        zip(_axis_choices(dataset, fixed), _seeds(dataset.seed, fixed), strict=False)
    ):
        if index >= stop:
            break
        if index < start:
            continue
        axes = {axis: values[axis][choice[axis]] for axis, _ in AXES}
        prompt = template.format(description=persona.description, **axes)
        caption = dataset.caption_template.format(
            trigger_word=persona.trigger_word,
            caption_class=persona.caption_phrase,
            description=persona.description,
            **axes,
        )
        planned.append(
            PlannedImage(
                index=index,
                id=image_id(index),
                seed=seed,
                axes=axes,
                prompt=prompt,
                caption=caption,
                fixed_seed=index < fixed,
            )
        )
    return planned
