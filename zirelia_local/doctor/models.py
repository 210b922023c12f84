"""The device and model rows: where generation runs and whether the generator's weights (and, for an
identity-anchored dataset, FLUX.1 Kontext's) can be loaded, from the built-in tiny model, a local folder, the
Hugging Face cache or the hub (with its token).

The cache is read from disk; the one network call (`hub_access`) runs in a thread that is abandoned after a
few seconds, so a machine without internet never hangs the doctor.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from zirelia_local.common.config import GeneratorConfig, ZireliaConfig
from zirelia_local.common.processes import local_process_count
from zirelia_local.dataset.tiny_flux import is_builtin
from zirelia_local.doctor.check import FACE_STAGES, GB, MODEL_STAGES, STAGES, Check, fail, ok, warn
from zirelia_local.doctor.environment import mps_available
from zirelia_local.training.presets import GpuInfo

FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
KONTEXT_DEV_REPO = "black-forest-labs/FLUX.1-Kontext-dev"
# Both repositories are gated behind the FLUX.1 [dev] Non-Commercial License.
GATED_REPOS = frozenset({FLUX_DEV_REPO, KONTEXT_DEV_REPO})
# What `FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")` downloads: transformer 23.8 GB (bf16),
# T5-XXL 9.5 GB, CLIP-L 0.25 GB, VAE 0.17 GB, tokenizers and configs. FLUX.1 Kontext [dev]'s diffusers folders
# hold the same components at the same sizes (its transformer is the same 12B architecture).
FLUX_DEV_DOWNLOAD_BYTES = 34 * GB
HUB_CHECK_TIMEOUT_S = 5.0

# Whether `token` may download a repository: (True, why), (False, why) or (None, the hub did not answer).
HubAccess = Callable[[str, str | None], tuple[bool | None, str]]


def gpu_requirement(config: ZireliaConfig, stages: Collection[str] = STAGES) -> str | None:
    """Why `stages` of the configured run need a CUDA GPU, or None when they run on CPU (the built-in tiny
    model, or no stage that loads a model)."""
    if MODEL_STAGES.isdisjoint(stages):
        return None
    # Every model stage runs on [generator] device (the diffusers trainer too); faces run on [curate] device.
    devices = {config.generator.device}
    if not FACE_STAGES.isdisjoint(stages):
        devices.add(config.curate.device)
    if any(device.startswith("cuda") for device in devices):
        return "the config asks for device 'cuda'"
    for model in real_models(config, stages):
        return f"{model} needs a CUDA GPU (a FLUX-size model on CPU takes hours per image)"
    return None


def kontext_stages(config: ZireliaConfig) -> frozenset[str]:
    """The stages that load `[generator] kontext_model`: the anchored dataset and curation's top-ups."""
    return frozenset({"dataset", "curate"}) if config.dataset.identity == "anchor" else frozenset()


def real_models(config: ZireliaConfig, stages: Collection[str] = STAGES) -> list[str]:
    """The FLUX-size (not built-in) models `stages` load: the generator, and Kontext for an anchored dataset."""
    models = [config.generator.model]
    if not kontext_stages(config).isdisjoint(stages):
        models.append(config.generator.kontext_model)
    return [model for model in models if not is_builtin(model)]


def device_check(config: ZireliaConfig, gpus: list[GpuInfo], stages: Collection[str] = STAGES) -> Check | None:
    """Where generation runs and how it fits; None when there is no GPU and the run needs one (the cuda row says so)."""
    gen = config.generator
    if gen.device.startswith("cuda:") and gpus and int(gen.device.split(":")[1]) >= len(gpus):
        return fail(
            "device",
            f"[generator] device = {gen.device!r} but only {len(gpus)} GPU(s) are visible",
            "use cuda:0 .. cuda:N-1, or check CUDA_VISIBLE_DEVICES",
        )
    launched = local_process_count()
    if launched > 1 and gpus and gen.device in ("auto", "cuda") and launched > len(gpus):
        # each process of a launch takes cuda:<local rank> (common/processes.py)
        return fail(
            "device",
            f"this launch runs {launched} processes on this machine but {len(gpus)} GPU(s) are visible",
            f"launch at most {len(gpus)} process(es) a machine (--num-processes / accelerate --num_processes), "
            "or check CUDA_VISIBLE_DEVICES",
        )
    if "train" in stages and config.train.num_processes > 1 and config.train.num_processes > len(gpus):
        return fail(
            "device",
            f"[train] num_processes = {config.train.num_processes} but {len(gpus)} GPU(s) are visible",
            "set num_processes to the number of GPUs (docker: --gpus all)",
        )
    real_model = bool(real_models(config, stages))
    if not gpus:
        if gpu_requirement(config, stages):
            return None
        if gen.device == "mps" or (gen.device == "auto" and mps_available()):
            return warn("device", "Apple MPS: generation may run, slowly; the kohya backend needs CUDA")
        return ok("device", "cpu")
    if gen.device == "cpu" or gen.device == "mps":
        if real_model:
            return fail(
                "device",
                f"[generator] device = {gen.device!r} with {', '.join(real_models(config, stages))}: hours per image",
                'set device = "auto" (or "cuda") to use the GPU',
            )
        return ok("device", f"{gen.device} (a GPU is visible but the config does not use it)")
    import torch

    from zirelia_local.dataset.flux import plan_memory

    device = "cuda:0" if gen.device == "auto" else gen.device
    index = int(device.split(":")[1]) if ":" in device else 0
    plan = plan_memory(gen, torch.device(device), total_memory=gpus[index].total_bytes)
    detail = f"{device}; generation: memory {plan.memory}, quantization {plan.quantization}"
    if plan.fallback is not None:  # auto fell back from nf4: say why, on the card that needs nf4 most
        return warn("device", f"{detail} ({plan.reason})", "pip install bitsandbytes into this environment")
    return ok("device", detail)


def hub_token() -> tuple[str | None, str]:
    """The Hugging Face token and where it came from (never printed)."""
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable):
            return os.environ[variable], variable
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:
        token = None
    return (token, "hf auth login") if token else (None, "")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder (HF_HOME / HF_HUB_CACHE), read at call time so tests can move it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_pipeline_status(
    repo_id: str, revision: str | None = None, cache_dir: Path | None = None
) -> tuple[bool, str]:
    """(complete, detail) for a diffusers pipeline in the local Hugging Face cache, read from disk only.

    Complete means model_index.json is cached and every component folder it lists is there, with the weights
    files that its safetensors index (if any) names.
    """
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir, revision=revision)
    if not isinstance(index, str):
        return False, "not in the Hugging Face cache"
    snapshot = Path(index).parent
    components = [
        name
        for name, value in json.loads(Path(index).read_text()).items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
    ]
    missing = [name for name in components if not _component_complete(snapshot / name)]
    if missing:
        return False, f"partly cached: {', '.join(missing)} missing or incomplete (an interrupted download?)"
    size = sum(path.stat().st_size for path in snapshot.rglob("*") if path.is_file())
    return True, f"cached ({size / GB:.1f} GB, {snapshot})"


def _component_complete(folder: Path) -> bool:
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    for index_file in folder.glob("*.index.json"):
        shards = set(json.loads(index_file.read_text()).get("weight_map", {}).values())
        if not all((folder / shard).is_file() for shard in shards):
            return False
    if (folder / "config.json").is_file():  # a model (not a tokenizer or scheduler): it needs weights
        return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return True


def hub_access(repo_id: str, token: str | None, timeout: float = HUB_CHECK_TIMEOUT_S) -> tuple[bool | None, str]:
    """Ask the hub whether `token` may download `repo_id`: (True, ...), (False, why) or (None, unreachable).

    Runs in a daemon thread that is abandoned after `timeout` seconds, so a machine without internet
    (or with a slow DNS) never hangs the doctor.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None, "HF_HUB_OFFLINE is set"
    result: list[tuple[bool | None, str]] = []

    def probe() -> None:
        from huggingface_hub import auth_check
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            auth_check(repo_id, token=token)
            result.append((True, "access granted"))
        except GatedRepoError:
            result.append((False, "gated: this account has not accepted the licence"))
        except RepositoryNotFoundError:
            result.append((False, "not found (or private, or the token is invalid)"))
        except Exception as error:
            result.append((None, f"hub unreachable ({type(error).__name__})"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else (None, f"hub unreachable (no answer in {timeout:.0f} s)")


def generator_model_check(gen: GeneratorConfig, access: HubAccess = hub_access) -> Check:
    """Can the generator's weights be loaded: built-in, a local folder, or a hub id cached or downloadable."""
    return pipeline_model_check("generator model", "[generator] model", gen.model, gen.revision, access)


def kontext_model_check(gen: GeneratorConfig, access: HubAccess = hub_access) -> Check:
    """Can FLUX.1 Kontext's weights (`[generator] kontext_model`, for an anchored dataset) be loaded."""
    return pipeline_model_check(
        "kontext model", "[generator] kontext_model", gen.kontext_model, gen.kontext_revision, access
    )


def pipeline_model_check(name: str, key: str, model: str, revision: str | None, access: HubAccess) -> Check:
    """The model row `name` for `model` (named by the config `key`): built-in, a local diffusers folder, or a
    hub id that is cached, or downloadable with the token found (asked of the hub through `access`)."""
    if is_builtin(model):
        return ok(name, f"{model} (embedded tiny model, built on first use)")
    path = Path(model).expanduser()
    if path.exists():
        if (path / "model_index.json").is_file():
            return ok(name, f"local diffusers folder {path}")
        return fail(
            name,
            f"{path} has no model_index.json",
            f"point {key} at a folder saved with save_pretrained (or a hub id); single files like "
            "flux1-dev.safetensors are for [train] pretrained_model",
        )
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return fail(name, f"{model!r} is neither an existing folder nor a hub id", "check the path or the hub id")
    complete, detail = cached_pipeline_status(model, revision, cache_dir=hub_cache_dir())
    if complete:
        return ok(name, f"{model}: {detail}")
    token, token_source = hub_token()
    licence = f"accept the licence at https://huggingface.co/{model} with your account, create a read token, "
    download = (
        f"`hf download {model}` on a machine with internet (HF_HOME chooses where the cache lives), or copy a "
        f"saved pipeline folder here and set {key} to its path"
    )
    if token is None and model in GATED_REPOS:
        return fail(
            name,
            f"{model}: {detail}, and no Hugging Face token (the repository is gated)",
            licence + "then `export HF_TOKEN=hf_...` (or `hf auth login`); or " + download,
        )
    with_token = f"token from {token_source}" if token else "no token"
    granted, why = access(model, token)
    if granted:
        return warn(
            name,
            f"{model}: {detail}; {with_token}, {why}: the first run downloads it"
            + (f" (about {FLUX_DEV_DOWNLOAD_BYTES / GB:.0f} GB)" if model in GATED_REPOS else ""),
            "nothing to do, or download it ahead: " + download,
        )
    if granted is False:
        return fail(name, f"{model}: {detail}; {with_token}: {why}", licence + "then run again")
    return fail(name, f"{model}: {detail}; {with_token}, and {why}", download)
