"""The environment rows: Python, the packages every stage imports, torch and its CUDA build, the optional
insightface/onnxruntime pair, the GPUs PyTorch sees and the training VRAM preset that fits them.

torch and onnxruntime are imported inside the functions: the doctor must still print its table (with the
fix) on a machine where they are missing or broken.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Collection

from zirelia_local.common.config import CurateConfig, TrainConfig, ZireliaConfig
from zirelia_local.doctor.check import FACE_STAGES, GIB, STAGES, Check, fail, generator_stages, ok, warn
from zirelia_local.training.presets import MIN_GIB, GpuInfo, fitting_preset, used_gpus

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


def python_check() -> Check:
    """The interpreter running zirelia: 3.11 or newer."""
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info < (3, 11):  # noqa: UP036 - the check is for users on an older Python
        return fail("python", f"Python {version} ({sys.executable})", "use Python 3.11 or newer")
    return ok("python", f"Python {version} ({sys.executable})")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_checks(config: ZireliaConfig | None = None, stages: Collection[str] = STAGES) -> list[Check]:
    """Versions of torch (with its CUDA build) and of the libraries every stage imports.

    The optional packages fail only when the config picks them for one of `stages`: insightface for a stage
    that embeds faces, bitsandbytes for one that loads the generator.
    """
    checks = [torch_check()]
    reinstall = "pip install -e . (in the project folder) or pip install zirelia-local"
    for distribution, purpose in REQUIRED_PACKAGES:
        version = _version(distribution)
        if version is None:
            checks.append(fail(distribution, f"not installed ({purpose})", reinstall))
        else:
            checks.append(ok(distribution, version))
    embeds_faces = config is not None and not FACE_STAGES.isdisjoint(stages)
    checks.append(insightface_package_check(config.curate if config is not None and embeds_faces else None))
    bnb = _version("bitsandbytes")
    wants_bnb = (
        config is not None
        and config.generator.quantization.startswith("bnb_")
        and not generator_stages(config).isdisjoint(stages)
    )
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
    """torch's version and whether it is a CUDA or a CPU-only build."""
    try:
        import torch
    except ImportError:
        return fail(
            "torch", "not installed", "install a CUDA build of PyTorch that matches your driver (pip install torch)"
        )
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return ok("torch", f"{torch.__version__} ({build})")


def onnxruntime_providers() -> list[str] | None:
    """onnxruntime's execution providers (CUDA among them or not); None when it is not installed."""
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
    """Whether Apple's MPS backend is usable (False without torch)."""
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except ImportError:
        return False


#: Where FLUX.1-dev runs (the fix of the cuda row).
GPU_MACHINE = (
    "a machine with an NVIDIA GPU and a CUDA build of PyTorch that matches its driver (`nvidia-smi` shows the "
    "driver; docker/README.md for a rented box)"
)


def gpu_checks(gpus: list[GpuInfo], summary: str, *, gpu_required: str | None, for_config: bool = False) -> list[Check]:
    """One row for CUDA, one per GPU. `gpu_required` says why the configured run needs one (None: it does not);
    `for_config`: the rows are for a config (whose run, when no GPU is required, is fine on the CPU)."""
    if not gpus and for_config and not gpu_required:
        return [ok("cuda", f"{summary}; not needed: no stage checked here runs on a GPU")]
    if not gpus:
        if gpu_required:
            return [
                fail(
                    "cuda",
                    f"{summary}; {gpu_required}",
                    f"run on {GPU_MACHINE}, or use configs/demo.toml on CPU",
                )
            ]
        return [
            warn(
                "cuda",
                f"{summary}; only the CPU demo (configs/demo.toml) runs here",
                f"for FLUX.1-dev, run on {GPU_MACHINE}",
            )
        ]
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
