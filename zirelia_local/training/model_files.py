"""The model files sd-scripts loads, with `"auto"` found in the repository `[generator] model` already names.

`[train] pretrained_model`, `clip_l`, `t5xxl` and `ae` = "auto" (the default) take sd-scripts' FLUX inputs
from the generator's FLUX repository, so one download serves generation and training. The repository is the
generator's snapshot in the Hugging Face cache (found on disk with huggingface_hub, never over the network)
or its local folder (`hf download ... --local-dir`). What each key becomes, as sd-scripts 48d368fa's
`library/flux_utils.py` reads it:

- `pretrained_model`: `flux1-dev.safetensors` (BFL layout) where the repository has it; else the diffusers
  transformer: the pipeline folder when `transformer/` holds the repository's three shards (sd-scripts then
  reads `transformer/diffusion_pytorch_model-0000N-of-00003.safetensors` and converts the keys), or its
  single unsharded file.
- `clip_l`: `text_encoder/model.safetensors` (a `CLIPTextModel` state dict, what its CLIP-L loader fills).
- `t5xxl`: `text_encoder_2/model.safetensors` if unsharded; else its shards merged once into one file in
  zirelia's cache (`t5_merge`), since sd-scripts' T5-XXL loader reads a single file.
- `ae`: `ae.safetensors` (BFL layout; sd-scripts cannot read the diffusers `vae/` folder).

A piece that is not there names the `hf download` command that brings it. Explicit paths are passed through
unchanged (the kohya backend checks them as before).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.config import GeneratorConfig, ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.dataset.tiny_flux import cache_root, is_builtin
from zirelia_local.training.t5_merge import (
    INDEX_NAME,
    T5Merge,
    merge_t5_shards,
    merged_is_current,
    plan_t5_merge,
    shard_names,
)

AUTO = "auto"
FLUX_KEYS = ("pretrained_model", "clip_l", "t5xxl", "ae")
FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
#: Where merged T5-XXL files go, under zirelia's cache (ZIRELIA_CACHE).
T5_CACHE_FOLDER = "flux-t5xxl"
#: The diffusers transformer shards sd-scripts reads from a pipeline folder (it asks for exactly these).
THREE_SHARDS = tuple(f"diffusion_pytorch_model-{index:05d}-of-00003.safetensors" for index in (1, 2, 3))
GB = 1000**3
MIB = 2**20


@dataclass(frozen=True)
class FluxRepository:
    """The generator's FLUX repository on this machine: its folder (None when nothing of it is here)."""

    root: Path | None
    repo_id: str  # for download commands
    where: str  # for messages: "black-forest-labs/FLUX.1-dev in the Hugging Face cache" or the folder
    local_dir: Path | None = None  # a local folder: downloads go into it
    revision: str | None = None
    problem: str | None = None  # why it cannot hold sd-scripts' files at all

    def download(self, *args: str) -> str:
        """The `hf download` command that puts `args` (files, --include patterns) where this repository is."""
        parts = ["hf", "download", self.repo_id, *args]
        if self.revision:
            parts += ["--revision", self.revision]
        if self.local_dir is not None:
            parts += ["--local-dir", str(self.local_dir)]
        return shlex.join(parts)

    @property
    def bfl_name(self) -> str:
        """The repository's single transformer file: FLUX.1-dev -> flux1-dev.safetensors."""
        name = (self.local_dir.name if self.local_dir is not None else self.repo_id.split("/")[-1]).lower()
        return re.sub(r"^flux\.1", "flux1", name) + ".safetensors"

    @property
    def one_download(self) -> str:
        """Everything generation and training use: the diffusers folders and ae.safetensors (~34 GB)."""
        return self.download("--exclude", self.bfl_name)

    def t5_target(self) -> Path:
        """The merged T5-XXL file of this repository in zirelia's cache."""
        if self.local_dir is not None:
            digest = hashlib.sha256(str(self.local_dir).encode()).hexdigest()[:10]
            slug = f"{self.local_dir.name}-{digest}"
        else:
            slug = self.repo_id.replace("/", "--") + (f"--{self.revision}" if self.revision else "")
        return cache_root() / T5_CACHE_FOLDER / (re.sub(r"[^A-Za-z0-9._-]", "_", slug) + "-t5xxl.safetensors")


@dataclass(frozen=True)
class ModelFile:
    """One model input of sd-scripts: what it is given, or why there is nothing to give."""

    key: str
    value: str | None  # the config's own string for an explicit path; an absolute path for "auto"
    auto: bool = False
    detail: str = ""  # where an "auto" value was found
    problem: str | None = None
    fix: str = ""
    merge: T5Merge | None = None  # t5xxl from shards: the merge that makes `value`

    @property
    def merge_pending(self) -> bool:
        return self.merge is not None and not merged_is_current(self.merge)


def resolve_model_files(config: ZireliaConfig) -> dict[str, ModelFile]:
    """Every model input of `[train] model_type`, "auto" resolved from disk (nothing downloaded or merged)."""
    train = config.train
    keys = FLUX_KEYS if train.model_type == "flux" else ("pretrained_model",)
    repository: FluxRepository | None = None
    files: dict[str, ModelFile] = {}
    for key in keys:
        value = getattr(train, key)
        if value is None:
            files[key] = ModelFile(key, None, problem="not set")
        elif str(value) != AUTO or isinstance(value, Path):
            files[key] = ModelFile(key, str(value))
        elif train.model_type != "flux":
            files[key] = ModelFile(
                key,
                None,
                auto=True,
                problem=f'"auto" finds FLUX files only; model_type = "{train.model_type}" needs its base model',
                fix=f"set [train] {key} to the {train.model_type} checkpoint (a .safetensors file or diffusers folder)",
            )
        else:
            repository = repository or find_repository(config.generator)
            files[key] = _resolve_auto(key, repository)
    return files


def find_repository(gen: GeneratorConfig) -> FluxRepository:
    """The generator's FLUX repository: its local folder, or its snapshot in the Hugging Face cache."""
    model = gen.model
    if is_builtin(model):
        reason = f"[generator] model is {model}, the embedded test model, which has no files sd-scripts can load"
        return FluxRepository(None, FLUX_DEV_REPO, model, problem=reason)
    path = Path(model).expanduser()
    if path.is_dir():
        root = path.absolute()
        return FluxRepository(root, FLUX_DEV_REPO, str(root), local_dir=root, problem=_not_flux(root))
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        reason = f"[generator] model {model!r} is neither a folder nor a hub id"
        return FluxRepository(None, FLUX_DEV_REPO, model, problem=reason)
    root = _cached_snapshot(model, gen.revision)
    where = f"{model} in the Hugging Face cache"
    return FluxRepository(
        root, model, where, revision=gen.revision, problem=_not_flux(root) if root is not None else None
    )


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the Hugging Face cache, if any file of it is there."""
    from huggingface_hub import constants, try_to_load_from_cache

    name = repo_id.split("/")[-1].lower()
    bfl = re.sub(r"^flux\.1", "flux1", name) + ".safetensors"
    for filename in ("model_index.json", "ae.safetensors", bfl, "text_encoder/config.json", "transformer/config.json"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision)
        if isinstance(found, str):
            return Path(found).parents[filename.count("/")]
    return None


def _not_flux(root: Path) -> str | None:
    try:
        pipeline = json.loads((root / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None  # no pipeline index: single files only, judged one by one
    if pipeline and not str(pipeline).startswith("Flux"):
        return f"{root} holds a {pipeline}, not a FLUX pipeline"
    return None


def _resolve_auto(key: str, repository: FluxRepository) -> ModelFile:
    if repository.problem is not None:
        fix = f"set [train] {key} to the file (README: the two-download route), or [generator] model to FLUX.1-dev"
        return ModelFile(key, None, auto=True, problem=repository.problem, fix=fix)
    if repository.root is None:
        return ModelFile(
            key,
            None,
            auto=True,
            problem=f"{repository.where.removesuffix(' in the Hugging Face cache')} is not in the Hugging Face cache",
            fix=repository.one_download + " (the one download for generation and training, ~34 GB)",
        )
    resolver = {"pretrained_model": _transformer, "clip_l": _clip_l, "t5xxl": _t5xxl, "ae": _ae}[key]
    return resolver(repository, repository.root)


def _found(key: str, repository: FluxRepository, path: Path, note: str = "") -> ModelFile:
    root = repository.root or path
    relative = path.relative_to(root).as_posix() if path != root else "transformer/"
    size = _size(path)
    where = repository.where if repository.local_dir is None else str(root)
    detail = f"{relative} of {where}{f' {note}' if note else ''} ({size / GB:.2f} GB)"
    return ModelFile(key, str(path), auto=True, detail=detail)


def _missing(key: str, repository: FluxRepository, what: str, *download: str) -> ModelFile:
    where = repository.where if repository.local_dir is None else str(repository.root)
    return ModelFile(key, None, auto=True, problem=f"{what} is not in {where}", fix=repository.download(*download))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum((path / "transformer" / name).stat().st_size for name in THREE_SHARDS)
    return path.stat().st_size


def _transformer(repository: FluxRepository, root: Path) -> ModelFile:
    key = "pretrained_model"
    candidates = [root / repository.bfl_name, *sorted(root.glob("flux1*.safetensors"))]
    single = next((path for path in candidates if path.is_file()), None)
    if single is not None:
        return _found(key, repository, single)
    folder = root / "transformer"
    unsharded = folder / "diffusion_pytorch_model.safetensors"
    if unsharded.is_file():
        return _found(key, repository, unsharded, "(diffusers layout: sd-scripts converts the keys as it loads)")
    index = "diffusion_pytorch_model.safetensors.index.json"
    try:
        names = shard_names(folder, index) if (folder / index).is_file() else []
    except (OSError, ValueError):
        names = []
    complete = bool(names) and all((folder / name).is_file() for name in names)
    if complete and tuple(names) == THREE_SHARDS:
        # sd-scripts takes the pipeline folder and reads these three shards from transformer/ itself.
        note = "(3 diffusers shards: sd-scripts is given the pipeline folder and converts the keys as it loads)"
        return _found(key, repository, root, note)
    if complete:
        where = repository.where if repository.local_dir is None else str(root)
        return ModelFile(
            key,
            None,
            auto=True,
            problem=f"transformer/ in {where} has {len(names)} shards; sd-scripts reads the diffusers transformer "
            "only as the repository stores it (3 shards) or as one file",
            fix=repository.download(repository.bfl_name),
        )
    what = f"{repository.bfl_name} or a complete diffusers transformer/"
    return _missing(key, repository, what, "--include", "transformer/*")


def _clip_l(repository: FluxRepository, root: Path) -> ModelFile:
    path = root / "text_encoder" / "model.safetensors"
    if path.is_file():
        return _found("clip_l", repository, path)
    return _missing("clip_l", repository, "text_encoder/model.safetensors", "--include", "text_encoder/*")


def _ae(repository: FluxRepository, root: Path) -> ModelFile:
    path = root / "ae.safetensors"
    if path.is_file():
        return _found("ae", repository, path)
    return _missing("ae", repository, "ae.safetensors", "ae.safetensors")


def _t5xxl(repository: FluxRepository, root: Path) -> ModelFile:
    folder = root / "text_encoder_2"
    if (folder / "model.safetensors").is_file():
        return _found("t5xxl", repository, folder / "model.safetensors")
    download = ("--include", "text_encoder_2/*")
    try:
        names = shard_names(folder) if (folder / INDEX_NAME).is_file() else []
    except (OSError, ValueError):
        names = []
    if not names or not all((folder / name).is_file() for name in names):
        return _missing("t5xxl", repository, "text_encoder_2/ (the T5-XXL shards and their index)", *download)
    try:
        plan = plan_t5_merge(folder, repository.t5_target())
    except ZireliaError as error:
        return ModelFile("t5xxl", None, auto=True, problem=error.message, fix=repository.download(*download))
    size = f"{plan.total_bytes / GB:.2f} GB"
    if merged_is_current(plan):
        detail = f"{plan.target} ({size}), merged from text_encoder_2/'s {len(names)} shards; reused"
    else:
        detail = f"text_encoder_2/'s {len(names)} shards, merged once into {plan.target} ({size}) when training starts"
    return ModelFile("t5xxl", str(plan.target), auto=True, detail=detail, merge=plan)


def merge_pending_files(files: dict[str, ModelFile]) -> None:
    """Merge T5-XXL's shards where that is still to do, with a progress bar (a rerun after a kill resumes)."""
    for file in files.values():
        if file.merge is not None and file.merge_pending:
            _merge_with_progress(file.merge)


def _merge_with_progress(plan: T5Merge) -> None:
    from zirelia_local.common.console import progress_bar
    from zirelia_local.training.messages import info

    info(
        f"[train] t5xxl = auto: merging the {len(plan.shards)} T5-XXL shards of {plan.folder} into one file, "
        f"once: {plan.target} ({plan.total_bytes / GB:.1f} GB)"
    )
    with progress_bar("merging T5-XXL", total=round(plan.total_bytes / MIB), unit="MiB") as advance:
        outcome = merge_t5_shards(
            plan,
            on_progress=lambda count: advance(count / MIB),
            on_wait=lambda: info(f"waiting for another process that is merging {plan.target} ..."),
        )
    if outcome.resumed_from:
        info(f"continued an interrupted merge from {outcome.resumed_from / GB:.2f} GB")
