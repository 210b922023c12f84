"""Captions and sd-scripts inputs: the training set folder, `dataset.toml` and `sample_prompts.txt`.

The training set is `train_data/` in the run directory: a hard link to each image that is generated and
(if curation ran) kept, beside a `.txt` caption with the same stem, one line, trigger word first. This is
the DreamBooth-style layout sd-scripts reads (`[[datasets.subsets]] image_dir`). The step is cheap and
idempotent, so it reruns whenever the image set changes (after generation, after curation).

Key names follow sd-scripts' `library/config_util.py` (ConfigSanitizer schemas); `image_dir` is written
absolute because sd-scripts resolves it against its own working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_text, link_or_copy
from zirelia_local.common.manifest import MANIFEST_NAME, Manifest

TRAIN_DATA_DIR = "train_data"
DATASET_TOML = "dataset.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"
CAPTION_EXTENSION = ".txt"

# Keys of sd-scripts' dataset config that we write, checked against library/config_util.py
# (ConfigSanitizer: DATASET_ASCENDABLE_SCHEMA, SUBSET_ASCENDABLE_SCHEMA, DB_SUBSET_*_SCHEMA).
GENERAL_KEYS = {"shuffle_caption", "keep_tokens", "caption_extension"}
DATASET_KEYS = {
    "resolution",
    "batch_size",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
}
SUBSET_KEYS = {"image_dir", "caption_extension", "num_repeats", "class_tokens", "keep_tokens"}


@dataclass
class TrainingSet:
    folder: Path
    dataset_toml: Path
    sample_prompts: Path
    image_ids: list[str]


def selected_records(manifest: Manifest) -> list[dict[str, Any]]:
    """Generated images that curation (if it ran) kept, in plan order."""
    records = [r for r in manifest.generated() if r.get("curation", {}).get("kept", True)]
    return sorted(records, key=lambda r: r.get("index", 0))


def _owner_id(file_name: str, wanted: set[str]) -> str | None:
    """The image id a file in train_data/ belongs to: its stem, or a prefix of it ending before a '_'."""
    stem = file_name.split(".")[0]
    while stem:
        if stem in wanted:
            return stem
        stem = stem.rpartition("_")[0]
    return None


def caption_text(record: dict[str, Any]) -> str:
    # sd-scripts reads only the first line of a caption file and asserts it is not empty.
    return " ".join(str(record["caption"]).split())


def dataset_toml_text(image_dir: Path, *, resolution: int, batch_size: int, num_repeats: int, class_tokens: str) -> str:
    document = {
        "general": {
            # Caching text-encoder outputs (our default) requires shuffle_caption off.
            "shuffle_caption": False,
            "keep_tokens": 1,
            "caption_extension": CAPTION_EXTENSION,
        },
        "datasets": [
            {
                "resolution": resolution,
                "batch_size": batch_size,
                "enable_bucket": True,
                "min_bucket_reso": min(256, resolution),
                "max_bucket_reso": max(1024, resolution),
                # train_network.py asserts bucket_reso_steps % 64 == 0 for every trainer (FLUX and SDXL too).
                "bucket_reso_steps": 64,
                "bucket_no_upscale": True,
                "subsets": [
                    {
                        "image_dir": str(Path(image_dir).resolve()),
                        "caption_extension": CAPTION_EXTENSION,
                        "num_repeats": num_repeats,
                        "class_tokens": class_tokens,
                    }
                ],
            }
        ],
    }
    header = "# sd-scripts dataset config written by zirelia-local (`zirelia caption`); rerun it, do not edit.\n"
    return header + tomli_w.dumps(document)


def sample_prompt_line(prompt: str, *, size: int, seed: int, steps: int, guidance: float) -> str:
    """One line of sd-scripts' sample prompt file: prompt, then --w --h --d (seed) --s (steps) --g (guidance)."""
    clean = " ".join(prompt.split()).replace(" --", " -")  # a literal " --" would start an option
    return f"{clean} --w {size} --h {size} --d {seed} --s {steps} --g {guidance:g}"


def evaluation_prompt(config: ZireliaConfig, scene: str) -> str:
    """An evaluation / sample prompt: the trigger word and class phrase, then a scene not in training."""
    return f"{config.persona.trigger_word}, a photo of {config.persona.caption_phrase}, {scene}"


#: The live sample prompts' framings: the identity curve needs a visible face, in varied views.
SAMPLE_FRAMINGS = (
    "close-up portrait facing the camera",
    "head and shoulders, three-quarter view",
    "waist-up shot, looking slightly away",
    "head and shoulders, looking at the camera",
)
MAX_SAMPLE_PROMPTS = 4


@dataclass(frozen=True)
class SamplePrompt:
    """One prompt of `sample_prompts.txt`, drawn at every sampled epoch with the same seed."""

    index: int
    scene: str
    prompt: str
    seed: int


def sample_prompts(config: ZireliaConfig) -> list[SamplePrompt]:
    """The live identity curve's prompts: up to four of the critic's scenes (not in the training set), each with
    the trigger word and a framing that shows the face, and a seed fixed across epochs (the critic's seeds in
    turn), so the curve compares epochs on the same draws."""
    persona, seeds = config.persona, config.critic.seeds
    return [
        SamplePrompt(
            index=index,
            scene=scene,
            prompt=f"{persona.trigger_word}, a photo of {persona.caption_phrase}, "
            f"{SAMPLE_FRAMINGS[index % len(SAMPLE_FRAMINGS)]}, {scene}",
            seed=seeds[index % len(seeds)],
        )
        for index, scene in enumerate(config.critic.prompts[:MAX_SAMPLE_PROMPTS])
    ]


def sample_size(config: ZireliaConfig) -> int:
    """Side of the sample images: `[train] sample_resolution`, at most the dataset's."""
    return min(config.train.sample_resolution, config.dataset.resolution)


def run_caption(config: ZireliaConfig) -> TrainingSet:
    """`zirelia caption`: rebuild the training set's captions and sd-scripts files from the manifest.

    A run directory with no generated image is an error, not an empty training set: the user ran the
    stages out of order.
    """
    run_dir = config.run_dir
    if not Manifest(run_dir).generated():
        raise ZireliaError(
            f"nothing to caption in {run_dir}: it holds no generated image ({MANIFEST_NAME} is missing or empty)",
            hint="run `zirelia dataset CONFIG` first to make the dataset (or `zirelia curate CONFIG --images DIR` "
            "to bring in your own photos)",
        )
    return write_training_set(config, run_dir)


def write_training_set(
    config: ZireliaConfig, run_dir: Path, *, batch_size: int | None = None, resolution: int | None = None
) -> TrainingSet:
    """(Re)build train_data/, dataset.toml and sample_prompts.txt from the manifest."""
    run_dir = Path(run_dir)
    manifest = Manifest(run_dir)
    folder = run_dir / TRAIN_DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    records = selected_records(manifest)
    wanted = {record["id"] for record in records}

    # Drop what is no longer selected, including sd-scripts' caches beside it (<stem>_<W>x<H>_flux.npz ...).
    for path in folder.iterdir():
        if path.is_file() and _owner_id(path.name, wanted) is None:
            path.unlink()

    for record in records:
        source = run_dir / record["file"]
        target = folder / source.name
        link_or_copy(source, target)  # does nothing when the link is already in place
        caption_path = folder / f"{record['id']}{CAPTION_EXTENSION}"
        text = caption_text(record) + "\n"
        if not caption_path.exists() or caption_path.read_text(encoding="utf-8") != text:
            atomic_write_text(caption_path, text, durable=False)  # recomputed and compared on every run

    train_resolution = min(
        resolution or config.train.resolution or config.dataset.resolution, config.dataset.resolution
    )
    toml_path = atomic_write_text(
        run_dir / DATASET_TOML,
        dataset_toml_text(
            folder,
            resolution=train_resolution,
            batch_size=batch_size or config.train.batch_size or 1,
            num_repeats=config.train.num_repeats,
            class_tokens=config.persona.trigger_word,
        ),
    )
    critic = config.critic
    lines = [
        sample_prompt_line(
            sample.prompt,
            size=sample_size(config),
            seed=sample.seed,
            steps=critic.steps or config.generator.steps,
            guidance=critic.guidance if critic.guidance is not None else config.generator.guidance,
        )
        for sample in sample_prompts(config)
    ]
    prompts_path = atomic_write_text(run_dir / SAMPLE_PROMPTS, "\n".join(lines) + "\n")
    return TrainingSet(
        folder=folder, dataset_toml=toml_path, sample_prompts=prompts_path, image_ids=[r["id"] for r in records]
    )
