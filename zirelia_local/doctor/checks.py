"""`zirelia doctor [CONFIG]`: what a run needs, checked on this machine, printed as one table.

Every row is a check with a status: `ok`, `warn` (the run can start, but read this) or `FAIL` (the
configured run cannot start), a detail and, when it is not ok, the fix. Without a config only the
environment is checked (Python, packages, CUDA and GPUs); with one, also what that run needs: a device that
can run its model, the model weights (or hub access and a token), sd-scripts and its interpreter for the kohya
backend, the kohya model files, the face embedder's weights and disk space.

Nothing here downloads anything or waits on the network for long: the Hugging Face cache is read from disk,
and the only network call (an access check of a gated model that is not cached, when a token exists) is
abandoned after a few seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zirelia_local.common.config import CurateConfig, GeneratorConfig, TrainConfig, ZireliaConfig
from zirelia_local.dataset.tiny_flux import is_builtin
from zirelia_local.training.presets import MIN_GIB, GpuInfo, fitting_preset, used_gpus

Status = Literal["ok", "warn", "FAIL"]

GIB = 1024**3
GB = 1000**3
SD_SCRIPTS_COMMIT = "48d368fa"
SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts"
FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
# What `FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")` downloads: transformer 23.8 GB (bf16),
# T5-XXL 9.5 GB, CLIP-L 0.25 GB, VAE 0.17 GB, tokenizers and configs.
FLUX_DEV_DOWNLOAD_BYTES = 34 * GB
SD_SCRIPTS_TRAIN_SCRIPT = {"flux": "flux_train_network.py", "sdxl": "sdxl_train_network.py", "sd15": "train_network.py"}
SD_SCRIPTS_IMPORT_CHECK = "import library.train_util, accelerate, transformers, diffusers"
SD_SCRIPTS_IMPORT_TIMEOUT_S = 180.0
HUB_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


# --- environment -----------------------------------------------------------------------------------------


def python_check() -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info < (3, 11):  # noqa: UP036 - the check is for users on an older Python
        return fail("python", f"Python {version} ({sys.executable})", "use Python 3.11 or newer")
    return ok("python", f"Python {version} ({sys.executable})")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# (distribution, what it is for); all are dependencies of zirelia-local.
REQUIRED_PACKAGES = [
    ("diffusers", "FLUX pipeline"),
    ("transformers", "text encoders"),
    ("peft", "LoRA (diffusers backend, critic)"),
    ("accelerate", "devices, multi-GPU launch"),
    ("safetensors", "weights files"),
    ("huggingface-hub", "model downloads"),
    ("open-clip-torch", "critic prompt adherence"),
    ("dlib-bin", "dlib face embedder"),
]


def package_checks(config: ZireliaConfig | None = None) -> list[Check]:
    """Versions of torch (with its CUDA build) and of the libraries every stage imports."""
    checks = [torch_check()]
    reinstall = "pip install -e . (in the project folder) or pip install zirelia-local"
    for distribution, purpose in REQUIRED_PACKAGES:
        version = _version(distribution)
        if version is None:
            checks.append(fail(distribution, f"not installed ({purpose})", reinstall))
        else:
            checks.append(ok(distribution, version))
    checks.append(insightface_package_check(config.curate if config else None))
    bnb = _version("bitsandbytes")
    wants_bnb = config is not None and config.generator.quantization.startswith("bnb_")
    if bnb is None and wants_bnb:
        checks.append(
            fail(
                "bitsandbytes",
                f"not installed, but [generator] quantization = {config.generator.quantization!r}",
                'pip install bitsandbytes (CUDA only), or set quantization = "fp8_storage"',
            )
        )
    else:
        checks.append(ok("bitsandbytes", bnb or "not installed (optional: quantization = bnb_nf4 / bnb_int8)"))
    return checks


def torch_check() -> Check:
    try:
        import torch
    except ImportError:
        return fail(
            "torch", "not installed", "install a CUDA build of PyTorch that matches your driver (pip install torch)"
        )
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return ok("torch", f"{torch.__version__} ({build})")


def onnxruntime_providers() -> list[str] | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def insightface_package_check(curate: CurateConfig | None) -> Check:
    """insightface and onnxruntime: optional, unless the config picks the insightface embedder."""
    needed = curate is not None and curate.embedder == "insightface"
    version = _version("insightface")
    providers = onnxruntime_providers()
    if version is None or providers is None:
        missing = "insightface" if version is None else "onnxruntime"
        fix = 'pip install -e ".[insightface-gpu]" (GPU) or ".[insightface]" (CPU), or set [curate] embedder = "dlib"'
        if needed:
            return fail("insightface", f"{missing} not installed, but [curate] embedder = 'insightface'", fix)
        return ok("insightface", f"{missing} not installed (optional: embedder = insightface)")
    runtime = "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime"
    return ok("insightface", f"{version}; {runtime} providers: {', '.join(providers)}")


def gpu_inventory() -> tuple[list[GpuInfo], str]:
    """The CUDA GPUs PyTorch sees, and a line about CUDA (why there are none, when there are none)."""
    try:
        import torch
    except ImportError:
        return [], "PyTorch is not installed"
    if not torch.version.cuda:
        return [], f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return [], f"no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda} build)"
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        try:
            free, _total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            free = None
        gpus.append(GpuInfo(index, properties.name, properties.total_memory, free))
    return gpus, f"CUDA {torch.version.cuda} build, {len(gpus)} GPU(s)"


def mps_available() -> bool:
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except ImportError:
        return False


def gpu_checks(gpus: list[GpuInfo], summary: str, *, gpu_required: str | None) -> list[Check]:
    """One row for CUDA, one per GPU. `gpu_required` says why the configured run needs one (None: it does not)."""
    if not gpus:
        if gpu_required:
            return [
                fail(
                    "cuda",
                    f"{summary}; {gpu_required}",
                    "run on a machine with an NVIDIA GPU and a CUDA build of PyTorch that matches its driver "
                    "(`nvidia-smi` shows the driver; docker/README.md for a rented box), or use configs/demo.toml "
                    "on CPU",
                )
            ]
        return [warn("cuda", f"{summary}; only the CPU demo (configs/demo.toml) runs here")]
    rows = [ok("cuda", summary)]
    for gpu in gpus:
        free = f", {gpu.free_bytes / GIB:.1f} GiB free" if gpu.free_bytes is not None else ""
        rows.append(ok(f"gpu {gpu.index}", f"{gpu.name}: {gpu.total_bytes / GIB:.1f} GiB{free}"))
    return rows


def fitting_vram_preset(total_bytes: int) -> str | None:
    """The largest training memory preset a GPU of `total_bytes` holds; None below the smallest (12gb)."""
    return fitting_preset(total_bytes / GIB)


def vram_check(gpus: list[GpuInfo], train: TrainConfig | None) -> Check:
    """The VRAM preset that fits the smallest GPU training will use."""
    if not gpus:
        return ok("vram preset", "no GPU: none applies (the CPU demo does not use one)")
    used = used_gpus(gpus, train.gpu_ids, train.num_processes) if train is not None else gpus
    smallest = min(used, key=lambda gpu: gpu.total_bytes)
    fitting = fitting_vram_preset(smallest.total_bytes)
    where = f"gpu {smallest.index} ({smallest.total_bytes / GIB:.1f} GiB)"
    if fitting is None:
        return warn(
            "vram preset",
            f"{where} is below the smallest preset (12gb)",
            "FLUX LoRA training needs about 12 GB; use a larger GPU (sd-scripts can go lower with more "
            "block swapping through [train] extra_args, slowly)",
        )
    if train is None or train.vram == "auto":
        return ok("vram preset", f"{fitting} fits {where}")
    if smallest.total_bytes / GIB < MIN_GIB[train.vram]:
        return warn(
            "vram preset",
            f"[train] vram = {train.vram!r} but {where} fits only {fitting}: expect out-of-memory",
            f'set vram = "auto" (or "{fitting}")',
        )
    return ok("vram preset", f"{train.vram} as configured ({fitting} fits {where})")


# --- device and model ------------------------------------------------------------------------------------


def gpu_requirement(config: ZireliaConfig) -> str | None:
    """Why the configured run needs a CUDA GPU, or None when it runs on CPU (the built-in tiny model)."""
    devices = {config.generator.device, config.curate.device}
    if any(device.startswith("cuda") for device in devices):
        return "the config asks for device 'cuda'"
    if not is_builtin(config.generator.model):
        return f"{config.generator.model} needs a CUDA GPU (a FLUX-size model on CPU takes hours per image)"
    return None


def device_check(config: ZireliaConfig, gpus: list[GpuInfo]) -> Check | None:
    """Where generation runs and how it fits; None when there is no GPU and the run needs one (the cuda row says so)."""
    gen = config.generator
    if gen.device.startswith("cuda:") and gpus and int(gen.device.split(":")[1]) >= len(gpus):
        return fail(
            "device",
            f"[generator] device = {gen.device!r} but only {len(gpus)} GPU(s) are visible",
            "use cuda:0 .. cuda:N-1, or check CUDA_VISIBLE_DEVICES",
        )
    if config.train.num_processes > 1 and config.train.num_processes > len(gpus):
        return fail(
            "device",
            f"[train] num_processes = {config.train.num_processes} but {len(gpus)} GPU(s) are visible",
            "set num_processes to the number of GPUs (docker: --gpus all)",
        )
    real_model = not is_builtin(gen.model)
    if not gpus:
        if gpu_requirement(config):
            return None
        if gen.device == "mps" or (gen.device == "auto" and mps_available()):
            return warn("device", "Apple MPS: generation may run, slowly; the kohya backend needs CUDA")
        return ok("device", "cpu")
    if gen.device == "cpu" or gen.device == "mps":
        if real_model:
            return fail(
                "device",
                f"[generator] device = {gen.device!r} with {gen.model}: hours per image",
                'set device = "auto" (or "cuda") to use the GPU',
            )
        return ok("device", f"{gen.device} (a GPU is visible but the config does not use it)")
    import torch

    from zirelia_local.dataset.flux import plan_memory

    device = "cuda:0" if gen.device == "auto" else gen.device
    index = int(device.split(":")[1]) if ":" in device else 0
    plan = plan_memory(gen, torch.device(device), total_memory=gpus[index].total_bytes)
    return ok("device", f"{device}; generation: memory {plan.memory}, quantization {plan.quantization}")


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
    import json

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
    import json

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


def generator_model_check(
    gen: GeneratorConfig, access: Callable[[str, str | None], tuple[bool | None, str]] = hub_access
) -> Check:
    """Can the generator's weights be loaded: built-in, a local folder, or a hub id cached or downloadable."""
    name = "generator model"
    model = gen.model
    if is_builtin(model):
        return ok(name, f"{model} (embedded tiny model, built on first use)")
    path = Path(model).expanduser()
    if path.exists():
        if (path / "model_index.json").is_file():
            return ok(name, f"local diffusers folder {path}")
        return fail(
            name,
            f"{path} has no model_index.json",
            "point [generator] model at a folder saved with save_pretrained (or a hub id); single files like "
            "flux1-dev.safetensors are for [train] pretrained_model",
        )
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return fail(name, f"{model!r} is neither an existing folder nor a hub id", "check the path or the hub id")
    complete, detail = cached_pipeline_status(model, gen.revision, cache_dir=hub_cache_dir())
    if complete:
        return ok(name, f"{model}: {detail}")
    token, token_source = hub_token()
    licence = f"accept the licence at https://huggingface.co/{model} with your account, create a read token, "
    download = (
        f"`hf download {model}` on a machine with internet (HF_HOME chooses where the cache lives), or copy a "
        "saved pipeline folder here and set [generator] model to its path"
    )
    if token is None and model == FLUX_DEV_REPO:
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
            + (f" (about {FLUX_DEV_DOWNLOAD_BYTES / GB:.0f} GB)" if model == FLUX_DEV_REPO else ""),
            "nothing to do, or download it ahead: " + download,
        )
    if granted is False:
        return fail(name, f"{model}: {detail}; {with_token}: {why}", licence + "then run again")
    return fail(name, f"{model}: {detail}; {with_token}, and {why}", download)


# --- kohya backend ---------------------------------------------------------------------------------------


def sd_scripts_python(folder: Path, configured: Path | None) -> Path:
    """The interpreter the kohya backend uses: [train] python, else <sd_scripts>/venv/bin/python, else ours."""
    if configured is not None:
        return configured.expanduser()
    venv_python = folder / "venv" / "bin" / "python"
    return venv_python if venv_python.exists() else Path(sys.executable)


def sd_scripts_folder_check(folder: Path | None, model_type: str = "flux") -> Check:
    name = "sd-scripts"
    install = (
        f"git clone {SD_SCRIPTS_URL} && git -C sd-scripts checkout {SD_SCRIPTS_COMMIT}, then "
        "python -m venv sd-scripts/venv && sd-scripts/venv/bin/pip install torch torchvision && "
        "(cd sd-scripts && venv/bin/pip install -r requirements.txt); set ZIRELIA_SD_SCRIPTS=$PWD/sd-scripts "
        '(or [train] sd_scripts), or use [train] backend = "diffusers"'
    )
    if folder is None:
        return fail(name, "not set: neither [train] sd_scripts nor ZIRELIA_SD_SCRIPTS", install)
    if not folder.is_dir():
        return fail(name, f"{folder} does not exist", install)
    script = SD_SCRIPTS_TRAIN_SCRIPT[model_type]
    if not (folder / script).is_file():
        return fail(
            name,
            f"{folder} has no {script}: not an sd-scripts checkout, or one older than FLUX support",
            f"point it at a checkout of {SD_SCRIPTS_URL} at commit {SD_SCRIPTS_COMMIT} or later; " + install,
        )
    return ok(name, f"{folder} ({script})")


def sd_scripts_python_check(folder: Path, python: Path, timeout: float = SD_SCRIPTS_IMPORT_TIMEOUT_S) -> Check:
    """Run sd-scripts' interpreter on its own imports (library.train_util, accelerate, transformers, diffusers)."""
    name = "sd-scripts python"
    fix = f"cd {folder} && {python} -m pip install -r requirements.txt (plus a CUDA build of torch and torchvision)"
    if not python.exists():
        return fail(name, f"{python} does not exist", f"set [train] python to sd-scripts' interpreter, or {fix}")
    code = SD_SCRIPTS_IMPORT_CHECK + "; print(transformers.__version__, diffusers.__version__)"
    try:
        completed = subprocess.run(
            [str(python), "-c", code], cwd=folder, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return warn(name, f"{python}: importing sd-scripts took over {timeout:.0f} s", "check the disk and the venv")
    except OSError as error:
        return fail(name, f"{python} cannot run: {error.strerror}", fix)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return fail(name, f"{python}: {lines[-1] if lines else 'exit code ' + str(completed.returncode)}", fix)
    transformers_version, diffusers_version = [*completed.stdout.split(), "?", "?"][:2]
    return ok(name, f"{python} (transformers {transformers_version}, diffusers {diffusers_version})")


FLUX_FILES_FIX = {
    "pretrained_model": f"hf download {FLUX_DEV_REPO} flux1-dev.safetensors --local-dir models",
    "ae": f"hf download {FLUX_DEV_REPO} ae.safetensors --local-dir models",
    "clip_l": "hf download comfyanonymous/flux_text_encoders clip_l.safetensors --local-dir models",
    "t5xxl": "hf download comfyanonymous/flux_text_encoders t5xxl_fp16.safetensors --local-dir models",
}


def kohya_model_file_checks(train: TrainConfig) -> list[Check]:
    """The single files sd-scripts loads: the base model, and for FLUX also CLIP-L, T5-XXL and the autoencoder."""
    keys = ["pretrained_model", "clip_l", "t5xxl", "ae"] if train.model_type == "flux" else ["pretrained_model"]
    checks = []
    for key in keys:
        value = getattr(train, key)
        name = f"train.{key}"
        fix = FLUX_FILES_FIX.get(key, "download the base checkpoint") + f", then set [train] {key} to the file"
        if train.model_type == "flux":
            fix += " (the diffusers folder of [generator] is a separate download)"
        if value is None:
            checks.append(fail(name, "not set (the kohya backend needs it)", fix))
            continue
        path = Path(value).expanduser()
        if not path.exists():
            checks.append(fail(name, f"{path} not found", fix))
        elif path.is_file():
            checks.append(ok(name, f"{path} ({path.stat().st_size / GB:.2f} GB)"))
        else:
            checks.append(ok(name, f"{path} (folder)"))
    if train.model_type == "flux" and train.tokenizer_cache_dir is not None:
        folder = train.tokenizer_cache_dir.expanduser()
        expected = ["openai_clip-vit-large-patch14", "google_t5-v1_1-xxl"]
        missing = [item for item in expected if not (folder / item).is_dir()]
        if missing:
            checks.append(
                warn(
                    "train.tokenizer_cache_dir",
                    f"{folder} lacks {', '.join(missing)}: sd-scripts will fetch them from the hub",
                    "run one training with internet and --tokenizer_cache_dir set, or copy the folders",
                )
            )
        else:
            checks.append(ok("train.tokenizer_cache_dir", str(folder)))
    return checks


def kohya_checks(config: ZireliaConfig, *, import_timeout: float = SD_SCRIPTS_IMPORT_TIMEOUT_S) -> list[Check]:
    folder = config.sd_scripts_dir()
    folder_row = sd_scripts_folder_check(folder, config.train.model_type)
    checks = [folder_row]
    if not folder_row.failed and folder is not None:
        checks.append(sd_scripts_python_check(folder, sd_scripts_python(folder, config.train.python), import_timeout))
    return checks + kohya_model_file_checks(config.train)


# --- faces, critic, disk ---------------------------------------------------------------------------------


def embedder_check(curate: CurateConfig, gpus: list[GpuInfo]) -> Check:
    name = f"embedder ({curate.embedder})"
    if curate.embedder == "dlib":
        from zirelia_local.common.errors import ZireliaError
        from zirelia_local.faces.dlib_embedder import RESNET_MODEL, SHAPE_PREDICTOR_5, dlib_models_dir

        try:
            folder = dlib_models_dir()
        except ZireliaError as error:
            return fail(name, error.message, error.hint or "")
        return ok(name, f"{SHAPE_PREDICTOR_5}, {RESNET_MODEL} in {folder}")
    folder = curate.insightface_root.expanduser() / "models" / curate.insightface_model
    fix = (
        f"put the {curate.insightface_model} .onnx files in {folder} (buffalo_l is licensed for non-commercial "
        'research only), or set [curate] embedder = "dlib"'
    )
    if not folder.exists():
        return warn(name, f"{folder} does not exist: insightface will try to download the pack on first use", fix)
    onnx_files = sorted(path.name for path in folder.glob("*.onnx"))
    if not onnx_files:
        return fail(name, f"{folder} holds no .onnx file (insightface then fails with a bare AssertionError)", fix)
    providers = onnxruntime_providers() or []
    wants_gpu = curate.device.startswith("cuda") or (curate.device == "auto" and bool(gpus))
    if wants_gpu and "CUDAExecutionProvider" not in providers:
        return warn(
            name,
            f"{len(onnx_files)} model file(s) in {folder}, but onnxruntime has no CUDA provider: faces run on CPU",
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (both share one folder)",
        )
    return ok(name, f"{', '.join(onnx_files)} in {folder}")


def critic_clip_check(config: ZireliaConfig) -> Check | None:
    pretrained = config.critic.clip_pretrained
    if pretrained is None:
        return None
    name = "critic CLIP weights"
    if pretrained.endswith(".safetensors") or "/" in pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            return fail(name, f"{path} not found", "set [critic] clip_pretrained to an existing .safetensors file")
        return ok(name, str(path))
    return warn(name, f"open_clip tag {pretrained!r}: fetched from the hub on first use", "")


def estimate_run_bytes(config: ZireliaConfig) -> dict[str, int]:
    """A generous estimate of what the run writes into its run directory, by part, in bytes.

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
    return parts


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(name: str, folder: Path, needed: int, what: str) -> Check:
    where = _existing_ancestor(folder)
    free = shutil.disk_usage(where).free
    detail = f"{free / GB:.1f} GB free at {where}; {what} needs about {needed / GB:.1f} GB"
    if free < needed:
        return fail(name, detail, f"free {(needed - free) / GB:.1f} GB there, or point it at a larger disk")
    if free < 1.5 * needed:
        return warn(name, detail + " (little margin)", "free some space before a long run")
    return ok(name, detail)


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def disk_checks(config: ZireliaConfig, generator_cached: bool) -> list[Check]:
    parts = estimate_run_bytes(config)
    what = "the run (" + ", ".join(f"{key} {value / GB:.1f}" for key, value in parts.items()) + " GB)"
    checks = [disk_check("disk (run dir)", config.run_dir, sum(parts.values()), what)]
    if not generator_cached and not is_builtin(config.generator.model) and not Path(config.generator.model).exists():
        checks.append(
            disk_check(
                "disk (HF cache)", hub_cache_dir(), FLUX_DEV_DOWNLOAD_BYTES, f"downloading {config.generator.model}"
            )
        )
    return checks


# --- the whole table -------------------------------------------------------------------------------------


def collect_checks(
    config: ZireliaConfig | None,
    *,
    access: Callable[[str, str | None], tuple[bool | None, str]] = hub_access,
    import_timeout: float = SD_SCRIPTS_IMPORT_TIMEOUT_S,
) -> list[Check]:
    """Every check for `config` (environment only when None), in table order."""
    checks = [python_check(), *package_checks(config)]
    gpus, summary = gpu_inventory()
    required = gpu_requirement(config) if config is not None else None
    checks += gpu_checks(gpus, summary, gpu_required=required)
    checks.append(vram_check(gpus, config.train if config is not None else None))
    if config is None:
        return checks
    device_row = device_check(config, gpus)
    if device_row is not None:
        checks.append(device_row)
    model_row = generator_model_check(config.generator, access)
    checks.append(model_row)
    if config.train.backend == "kohya":
        checks += kohya_checks(config, import_timeout=import_timeout)
    else:
        checks.append(ok("training backend", "diffusers (built in; no sd-scripts needed)"))
    checks.append(embedder_check(config.curate, gpus))
    clip_row = critic_clip_check(config)
    if clip_row is not None:
        checks.append(clip_row)
    cached = model_row.status == "ok"
    checks += disk_checks(config, cached)
    return checks


def render_table(checks: Iterable[Check], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, soft_wrap=False)
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    style = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
    for check in checks:
        table.add_row(
            escape(check.name), f"[{style[check.status]}]{check.status}[/]", escape(check.detail), escape(check.fix)
        )
    console.print(table)


def run_doctor(config: ZireliaConfig | None) -> int:
    """Print the table; 1 when a FAIL row means the configured run cannot start, else 0."""
    from zirelia_local.common.console import console

    checks = collect_checks(config)
    title = f"zirelia doctor: {config.source or 'config'}" if config is not None else "zirelia doctor: environment"
    render_table(checks, title)
    failed = [check.name for check in checks if check.failed]
    warned = [check.name for check in checks if check.status == "warn"]
    if failed:
        what = "the configured run cannot start" if config is not None else "this environment is incomplete"
        console.print(f"[bold red]{len(failed)} check(s) failed[/bold red]: {what}: {', '.join(failed)}")
        return 1
    tail = f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""
    console.print(f"[green]ready[/green]{tail}")
    return 0
