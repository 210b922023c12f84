"""The rows about what a run holds besides its generator: the face embedder's weights, the critic's CLIP
weights, and the run directory (one that can be written, with disk space for the run) and disk space for the
generator's download into the HF cache."""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path

from zirelia_local.common.config import CurateConfig, ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.paths import display_path
from zirelia_local.common.rundir import RUN_DIR_HINT, run_dir_write_problem
from zirelia_local.dataset.tiny_flux import is_builtin
from zirelia_local.doctor.check import GB, STAGES, Check, Stage, fail, generator_stages, ok, warn
from zirelia_local.doctor.environment import onnxruntime_providers
from zirelia_local.doctor.models import FLUX_DEV_DOWNLOAD_BYTES, hub_cache_dir, kontext_stages
from zirelia_local.training.presets import GpuInfo

# Which stage writes each part of the run directory's estimate (curation's top-ups draw more dataset images).
RUN_BYTES_STAGES: dict[str, frozenset[Stage]] = {
    "dataset images": frozenset({"dataset", "curate"}),
    "LoRA epochs": frozenset({"train"}),
    "training state": frozenset({"train"}),
    "critic images": frozenset({"critic"}),
    "kohya caches": frozenset({"train"}),
}


def embedder_check(curate: CurateConfig, gpus: list[GpuInfo]) -> Check:
    """The configured face embedder's weights are on disk (and, for insightface on a GPU, onnxruntime can use it)."""
    name = f"embedder ({curate.embedder})"
    if curate.embedder == "dlib":
        # Imported here: the dlib module imports dlib itself, which the rest of the table does not need.
        from zirelia_local.faces.dlib_embedder import RESNET_MODEL, SHAPE_PREDICTOR_5, dlib_models_dir

        try:
            folder = dlib_models_dir()
        except ZireliaError as error:
            return fail(name, error.message, error.hint or "")
        return ok(name, f"{SHAPE_PREDICTOR_5}, {RESNET_MODEL} in {folder}")
    # The embedder's own check (faces/insightface_embedder.py), run before it builds FaceAnalysis: the folder
    # exists and holds a detector and a recogniser. It reads each .onnx graph's header (under a second for
    # buffalo_l), the same reading curation would do minutes later.
    from zirelia_local.faces.insightface_embedder import check_model_dir

    folder = curate.insightface_root.expanduser() / "models" / curate.insightface_model
    try:
        by_task = check_model_dir(curate.insightface_root, curate.insightface_model)
    except ZireliaError as error:
        return fail(name, error.message, error.hint or "")
    except ImportError as error:  # onnx missing: the insightface package row says how to install it
        return fail(name, f"cannot read {folder}: {error}", 'pip install -e ".[insightface]"')
    onnx_files = sorted(path.name for paths in by_task.values() for path in paths)
    providers = onnxruntime_providers() or []
    wants_gpu = curate.device.startswith("cuda") or (curate.device == "auto" and bool(gpus))
    if wants_gpu and "CUDAExecutionProvider" not in providers:
        return warn(
            name,
            f"{len(onnx_files)} model file(s) in {folder}, but onnxruntime has no CUDA provider: faces run on CPU",
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (both share one folder)",
        )
    return ok(name, f"{', '.join(onnx_files)} in {folder}")


def critic_clip_check(config: ZireliaConfig) -> Check:
    """Where the critic's CLIP weights come from, checked as the critic will load them (critic/clip_score.py),
    from disk only: a missing or refused file fails, no weights at all is a warning (nothing is scored for
    prompt adherence), an open_clip tag is fetched on first use."""
    from zirelia_local.critic.clip_score import CLIP_CHECK_NAME, WEIGHTS_HINT, clip_weights_source

    name = CLIP_CHECK_NAME
    try:
        source = clip_weights_source(config.critic, allow_pickle=config.run.allow_pickle)
    except ZireliaError as error:
        return fail(name, error.message, error.hint or "")
    if source is None:
        return warn(
            name,
            "prompt adherence will not be scored: no CLIP weights configured ([critic] clip_pretrained)",
            WEIGHTS_HINT,
        )
    if isinstance(source, Path):
        return ok(name, str(source))
    return warn(name, f"open_clip tag {source!r}: fetched from the hub on first use", "")


def reference_images_check(config: ZireliaConfig) -> Check | None:
    """[curate] reference_images, read as curation reads them (header only: every photo must be an image the
    one image opener accepts); None when none are configured."""
    from zirelia_local.curate import check_reference_images

    photos = config.curate.reference_images
    if not photos:
        return None
    try:
        check_reference_images(photos)
    except ZireliaError as error:
        return fail("reference images", error.message, error.hint or "")
    return ok("reference images", f"{len(photos)} photo(s)")


def run_dir_check(run_dir: Path) -> Check:
    """The run directory can be written: it is a folder we can create files in, or it will be created in its
    nearest existing parent, which must be one (`common.rundir.run_dir_write_problem`: probed with an unnamed
    temporary file, so a kill at any moment leaves nothing behind, and nothing is created where the run goes)."""
    path = run_dir.expanduser().absolute()
    problem = run_dir_write_problem(path)
    if problem is not None:
        return fail("run dir", f"cannot use {display_path(path)} as the run directory: {problem}", RUN_DIR_HINT)
    where = _existing_ancestor(path)
    return ok("run dir", f"{path} (writable)" if where == path else f"{path} (will be created in {where})")


def estimate_run_bytes(config: ZireliaConfig, stages: Collection[str] = STAGES) -> dict[str, int]:
    """A generous estimate of what `stages` of the run write into its run directory, by part, in bytes.

    Figures: a 1024 px PNG photo is about 1.5 MB (1.5 bytes per pixel); curation may generate up to twice the
    target; sd-scripts caches a latent (~1 MB at 1024 px) and T5 outputs (~8 MB) per image; a FLUX LoRA weighs
    about 5.4 MB per unit of rank; a training state holds the LoRA plus optimizer moments (about 4x).
    """
    dataset, train, critic = config.dataset, config.train, config.critic
    image_bytes = int(dataset.resolution**2 * 1.5)
    generated = config.dataset.count * (2 if config.curate.top_up_rounds else 1)
    lora_bytes = int(train.network_dim * 5.4e6) if train.model_type == "flux" else int(train.network_dim * 1.5e6)
    epochs_saved = -(-train.epochs // train.save_every_n_epochs)
    critic_resolution = critic.resolution or dataset.resolution
    scored_epochs = (
        1 if critic.epochs == "last" else (len(critic.epochs) if isinstance(critic.epochs, list) else epochs_saved)
    )
    parts = {
        "dataset images": generated * image_bytes,
        "LoRA epochs": epochs_saved * lora_bytes,
        "training state": 2 * 4 * lora_bytes,
        "critic images": scored_epochs
        * len(critic.prompts)
        * len(critic.seeds)
        * (1 + critic.max_retries)
        * int(critic_resolution**2 * 1.5),
    }
    if train.backend == "kohya":
        latent = int((dataset.resolution / 1024) ** 2 * 1e6)
        parts["kohya caches"] = generated * (latent + 8_000_000)
    return {part: size for part, size in parts.items() if not RUN_BYTES_STAGES[part].isdisjoint(stages)}


def _existing_ancestor(path: Path) -> Path:
    # A run directory that does not exist yet will live on the disk of its nearest existing parent.
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(name: str, folder: Path, needed: int, what: str) -> Check:
    """Free space where `folder` is (or will be) against `needed` bytes; a warning under a 1.5x margin."""
    where = _existing_ancestor(folder)
    free = shutil.disk_usage(where).free
    detail = f"{free / GB:.1f} GB free at {where}; {what} needs about {needed / GB:.1f} GB"
    if free < needed:
        return fail(name, detail, f"free {(needed - free) / GB:.1f} GB there, or point it at a larger disk")
    if free < 1.5 * needed:
        return warn(name, detail + " (little margin)", "free some space before a long run")
    return ok(name, detail)


def disk_checks(
    config: ZireliaConfig, generator_cached: bool, stages: Collection[str] = STAGES, *, kontext_cached: bool = True
) -> list[Check]:
    """Disk rows for `stages`: the run directory, and the HF cache when the generator (or, for an anchored
    dataset, FLUX.1 Kontext) is still to download."""
    checks = []
    parts = estimate_run_bytes(config, stages)
    if parts and run_dir_write_problem(config.run_dir) is None:  # else the "run dir" row says what is wrong
        what = "the run (" + ", ".join(f"{key} {value / GB:.1f}" for key, value in parts.items()) + " GB)"
        checks.append(disk_check("disk (run dir)", config.run_dir, sum(parts.values()), what))
    gen = config.generator
    downloads = [
        model
        for model, cached, used_by in (
            (gen.model, generator_cached, generator_stages(config)),
            (gen.kontext_model, kontext_cached, kontext_stages(config)),
        )
        if not cached and not used_by.isdisjoint(stages) and not is_builtin(model) and not Path(model).exists()
    ]
    if downloads:
        checks.append(
            disk_check(
                "disk (HF cache)",
                hub_cache_dir(),
                FLUX_DEV_DOWNLOAD_BYTES * len(downloads),
                f"downloading {' and '.join(downloads)}",
            )
        )
    return checks
