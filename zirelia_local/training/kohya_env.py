"""Where sd-scripts and its Python are, and whether that Python can run it.

sd-scripts pins its own transformers, diffusers and accelerate, so it runs in its own interpreter and is
never imported into ours. We ask that interpreter, in a short child process, which of sd-scripts'
requirements it can import and which CUDA devices its torch sees (the `auto` VRAM preset needs the
latter, and a wrong interpreter is the most common setup mistake).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.training.kohya_command import absolute, looks_like_hub_id
from zirelia_local.training.kohya_flags import SCRIPTS
from zirelia_local.training.model_files import resolve_model_files
from zirelia_local.training.presets import GpuInfo

#: Modules sd-scripts imports at start (its requirements.txt, plus its own `library` package), and
#: tensorboard, which `--log_with tensorboard` (always passed) needs.
REQUIRED_MODULES = (
    "torch",
    "torchvision",
    "accelerate",
    "transformers",
    "diffusers",
    "safetensors",
    "toml",
    "voluptuous",
    "einops",
    "cv2",
    "imagesize",
    "library",
    "tensorboard",
)
#: Needed only by some settings: bitsandbytes by the 8-bit optimizers (checked once the optimizer is known).
OPTIONAL_MODULES = ("bitsandbytes",)
_VERSIONED = ("torch", "accelerate", "transformers", "diffusers")
_PROBE_MARK = "ZIRELIA_PROBE "
# Run by sd-scripts' interpreter: only the standard library and (if present) torch.
_PROBE = """
import importlib.util, json, platform, sys
sys.path.insert(0, sys.argv[1])
missing = [m for m in sys.argv[2].split(",") if m and importlib.util.find_spec(m) is None]
info = {"python": platform.python_version(), "missing": missing, "versions": {}, "gpus": None}
from importlib import metadata
for dist in sys.argv[3].split(","):
    try:
        info["versions"][dist] = metadata.version(dist)
    except Exception:
        pass
if "torch" not in missing:
    try:
        import torch
        info["gpus"] = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["gpus"].append({"index": i, "name": p.name, "total_bytes": p.total_memory})
    except Exception as error:
        info["torch_error"] = repr(error)
print("ZIRELIA_PROBE " + json.dumps(info))
"""

INSTALL_HINT = (
    "git clone https://github.com/kohya-ss/sd-scripts && cd sd-scripts && python3 -m venv venv && "
    "venv/bin/pip install torch torchvision && venv/bin/pip install -r requirements.txt; then set "
    "[train] sd_scripts (or ZIRELIA_SD_SCRIPTS) to that folder"
)


@dataclass
class Probe:
    """What sd-scripts' interpreter reported about itself."""

    python_version: str
    missing: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: None when torch could not be imported
    gpus: list[GpuInfo] | None = None
    torch_error: str | None = None


def find_sd_scripts(config: ZireliaConfig) -> Path | None:
    """The configured checkout (`[train] sd_scripts`, else ZIRELIA_SD_SCRIPTS), absolute; None if unset."""
    folder = config.sd_scripts_dir()
    return folder.resolve() if folder is not None else None


def sd_scripts_problem(folder: Path | None, model_type: str) -> str | None:
    """Why `folder` cannot be used as the sd-scripts checkout for `model_type`, or None."""
    if folder is None:
        return "no sd-scripts checkout is configured ([train] sd_scripts or the ZIRELIA_SD_SCRIPTS variable)"
    problem = path_problem(folder, "folder")
    if problem is not None:
        return f"the sd-scripts folder {display_path(folder)} {problem}"
    script = SCRIPTS[model_type]
    if not (folder / "library" / "train_util.py").is_file():
        return f"{folder} is not an sd-scripts checkout (no library/train_util.py)"
    if not (folder / script).is_file():
        return f"{folder} has no {script}: the checkout predates it (FLUX training needs a 2025 or newer sd-scripts)"
    return None


def default_python(sd_scripts: Path | None) -> Path:
    """sd-scripts' own venv interpreter if there is one, else the one running us."""
    if sd_scripts is not None:
        for candidate in ("venv/bin/python", ".venv/bin/python", "venv/Scripts/python.exe", ".venv/Scripts/python.exe"):
            path = sd_scripts / candidate
            if path.is_file():
                return path
    return Path(sys.executable)


def find_python(config: ZireliaConfig, sd_scripts: Path | None) -> Path:
    """`[train] python` (absolute, links kept: a venv's python is a link), else `default_python`."""
    if config.train.python is not None:
        return Path(config.train.python).expanduser().absolute()
    return default_python(sd_scripts)


def probe_python(python: Path, sd_scripts: Path, modules: tuple[str, ...] | list[str] = REQUIRED_MODULES) -> Probe:
    """Ask `python` which of `modules` it lacks and which GPUs it sees (a few seconds: it imports torch)."""
    try:
        completed = subprocess.run(
            [str(python), "-c", _PROBE, str(sd_scripts), ",".join(modules), ",".join(_VERSIONED)],
            cwd=sd_scripts,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ZireliaError(
            f"sd-scripts' Python {python} does not exist", hint="set [train] python to sd-scripts' venv interpreter"
        ) from None
    except PermissionError:
        raise ZireliaError(f"sd-scripts' Python {python} is not executable") from None
    except subprocess.TimeoutExpired:
        raise ZireliaError(f"sd-scripts' Python {python} did not answer within 3 minutes") from None
    for line in completed.stdout.splitlines():
        if line.startswith(_PROBE_MARK):
            data = json.loads(line[len(_PROBE_MARK) :])
            gpus = data.get("gpus")
            return Probe(
                python_version=data["python"],
                missing=list(data.get("missing", [])),
                versions=dict(data.get("versions", {})),
                gpus=None if gpus is None else [GpuInfo(g["index"], g["name"], int(g["total_bytes"])) for g in gpus],
                torch_error=data.get("torch_error"),
            )
    detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
    raise ZireliaError(
        f"{python} could not run a Python check (exit code {completed.returncode}: {detail[0]})",
        hint="set [train] python to the interpreter of sd-scripts' virtual environment",
    )


def probe_problems(probe: Probe, python: Path, sd_scripts: Path, *, optional: tuple[str, ...] = ()) -> list[str]:
    """What in `probe` stops sd-scripts from running (empty when it can); `optional` modules are ignored."""
    problems = []
    missing = [module for module in probe.missing if module not in optional]
    major_minor = tuple(int(part) for part in probe.python_version.split(".")[:2])
    if major_minor < (3, 10):
        problems.append(f"{python} is Python {probe.python_version}; sd-scripts needs 3.10 or newer")
    if missing:
        problems.append(
            f"{python} lacks sd-scripts' requirements (cannot import: {', '.join(missing)}): it is probably "
            f"not the Python of sd-scripts' virtual environment (usually {sd_scripts / 'venv' / 'bin' / 'python'})"
        )
    transformers = probe.versions.get("transformers", "")
    if transformers and not transformers.startswith("4."):
        problems.append(
            f"{python} has transformers {transformers}; sd-scripts pins 4.54.1 (its requirements.txt): this looks "
            "like another project's interpreter"
        )
    if probe.torch_error:
        problems.append(f"torch fails to import in {python}: {probe.torch_error}")
    return problems


_MODEL_HINTS = {
    "pretrained_model": "flux1-dev.safetensors from black-forest-labs/FLUX.1-dev",
    "clip_l": "clip_l.safetensors from comfyanonymous/flux_text_encoders",
    "t5xxl": "t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors) from comfyanonymous/flux_text_encoders",
    "ae": "ae.safetensors from black-forest-labs/FLUX.1-dev",
}


def model_file_problems(config: ZireliaConfig) -> list[str]:
    """One line per model input that is unset, not found, or a truncated safetensors file."""
    problems = []
    for key, file in resolve_model_files(config).items():
        where = f"[train] {key}"
        if file.auto and file.problem is not None:
            problems.append(f'{where} = "auto": {file.problem}; {file.fix}')
            continue
        value = file.value
        if value is None:
            hint = (
                _MODEL_HINTS.get(key, "a checkpoint file or diffusers folder")
                if config.train.model_type == "flux"
                else ""
            )
            problems.append(f"{where} is not set" + (f" (expected {hint})" if hint else ""))
            continue
        if file.merge is not None:
            continue  # T5-XXL merged from shards that were just checked; the merge runs before the launch
        if key == "pretrained_model" and config.train.model_type != "flux" and looks_like_hub_id(value):
            continue  # SDXL / SD1.5 accept a hub id; sd-scripts downloads it
        path = absolute(value)
        if not path.exists():
            problems.append(f"{where} = {value!r}: {path} does not exist" + _expected(config, key))
        elif key in ("clip_l", "t5xxl", "ae") and not path.is_file():
            problems.append(f"{where} = {value!r}: {path} {path_problem(path, 'file')}" + _expected(config, key))
        elif path.is_file() and path.suffix == ".safetensors":
            damage = safetensors_damage(path)
            if damage:
                problems.append(f"{where} = {value!r}: {damage}")
    return problems


def _expected(config: ZireliaConfig, key: str) -> str:
    if config.train.model_type != "flux" or key not in _MODEL_HINTS:
        return ""
    return f' (expected {_MODEL_HINTS[key]}; or drop the key: "auto" finds it in [generator] model\'s download)'


def safetensors_damage(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (a partial download is the usual case), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path} is too short to be a safetensors file ({size} bytes)"
            header_size = int.from_bytes(head, "little")
            if header_size > min(size - 8, 100 * 2**20):
                return f"{path} is not a safetensors file (or is truncated)"
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError):
        return f"{path} has an unreadable safetensors header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated ({size} of {expected} bytes): download it again"
    return None
