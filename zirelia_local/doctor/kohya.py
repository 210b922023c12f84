"""The kohya backend's rows: the sd-scripts checkout, the interpreter that runs it (tried on its own imports)
and the single model files it loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.doctor.check import GB, Check, fail, ok, warn
from zirelia_local.doctor.models import FLUX_DEV_REPO
from zirelia_local.training.kohya_command import looks_like_hub_id
from zirelia_local.training.kohya_env import safetensors_damage
from zirelia_local.training.model_files import ModelFile, resolve_model_files

# The sd-scripts commit zirelia is tested against (docker/Dockerfile pins the same one).
SD_SCRIPTS_COMMIT = "48d368fa"
SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts"
SD_SCRIPTS_TRAIN_SCRIPT = {"flux": "flux_train_network.py", "sdxl": "sdxl_train_network.py", "sd15": "train_network.py"}
SD_SCRIPTS_MODULES = ("library.train_util", "accelerate", "transformers", "diffusers")
SD_SCRIPTS_IMPORT_CHECK = "import " + ", ".join(SD_SCRIPTS_MODULES)
# A cold import of torch, transformers and diffusers from a slow disk can take minutes.
SD_SCRIPTS_IMPORT_TIMEOUT_S = 180.0

FLUX_FILES_FIX = {
    "pretrained_model": f"hf download {FLUX_DEV_REPO} flux1-dev.safetensors --local-dir models",
    "ae": f"hf download {FLUX_DEV_REPO} ae.safetensors --local-dir models",
    "clip_l": "hf download comfyanonymous/flux_text_encoders clip_l.safetensors --local-dir models",
    "t5xxl": "hf download comfyanonymous/flux_text_encoders t5xxl_fp16.safetensors --local-dir models",
}
# sd-scripts loads these from one .safetensors file each, never from a folder.
SINGLE_FILE_KEYS = ("clip_l", "t5xxl", "ae")


def sd_scripts_python(folder: Path, configured: Path | None) -> Path:
    """The interpreter the kohya backend uses: [train] python, else <sd_scripts>/venv/bin/python, else ours."""
    if configured is not None:
        return configured.expanduser()
    venv_python = folder / "venv" / "bin" / "python"
    return venv_python if venv_python.exists() else Path(sys.executable)


def sd_scripts_folder_check(folder: Path | None, model_type: str = "flux") -> Check:
    """The sd-scripts folder exists and holds the training script for `model_type`."""
    name = "sd-scripts"
    install = (
        f"git clone {SD_SCRIPTS_URL} && git -C sd-scripts checkout {SD_SCRIPTS_COMMIT}, then "
        "python -m venv sd-scripts/venv && sd-scripts/venv/bin/pip install torch torchvision && "
        "(cd sd-scripts && venv/bin/pip install -r requirements.txt); set ZIRELIA_SD_SCRIPTS=$PWD/sd-scripts "
        '(or [train] sd_scripts), or use [train] backend = "diffusers"'
    )
    if folder is None:
        return fail(name, "not set: neither [train] sd_scripts nor ZIRELIA_SD_SCRIPTS", install)
    problem = path_problem(folder, "folder")
    if problem is not None:
        return fail(name, f"{display_path(folder)} {problem}", install)
    script = SD_SCRIPTS_TRAIN_SCRIPT[model_type]
    if not (folder / script).is_file():
        return fail(
            name,
            f"{folder} has no {script}: not an sd-scripts checkout, or one older than FLUX support",
            f"point it at a checkout of {SD_SCRIPTS_URL} at commit {SD_SCRIPTS_COMMIT} or later; " + install,
        )
    return ok(name, f"{folder} ({script})")


def sd_scripts_python_check(
    folder: Path,
    python: Path,
    timeout: float = SD_SCRIPTS_IMPORT_TIMEOUT_S,
    stop: threading.Event | None = None,
) -> Check:
    """Run sd-scripts' interpreter on its own imports (library.train_util, accelerate, transformers, diffusers).

    The imports take seconds (torch among them). When `stop` is set before they finish (the pre-flight has
    found failures that stop the run anyway), they are abandoned for a look-up of the same modules that
    imports nothing: a missing package is still reported with the other failures, in a fraction of a second.
    """
    name = "sd-scripts python"
    fix = f"cd {folder} && {python} -m pip install -r requirements.txt (plus a CUDA build of torch and torchvision)"
    problem = path_problem(python, "file")
    if problem is not None:
        return fail(
            name, f"{display_path(python)} {problem}", f"set [train] python to sd-scripts' interpreter, or {fix}"
        )
    if stop is not None and stop.is_set():
        return _sd_scripts_modules_check(folder, python, name, fix)
    code = SD_SCRIPTS_IMPORT_CHECK + "; print(transformers.__version__, diffusers.__version__)"
    try:
        process = subprocess.Popen(
            [str(python), "-c", code], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as error:
        return fail(name, f"{python} cannot run: {error.strerror}", fix)
    deadline = time.monotonic() + timeout
    while True:
        try:
            stdout, stderr = process.communicate(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            stopped = stop is not None and stop.is_set()
            if not stopped and time.monotonic() < deadline:
                continue
            process.kill()
            process.communicate()
            if stopped:
                return _sd_scripts_modules_check(folder, python, name, fix)
            return warn(
                name, f"{python}: importing sd-scripts took over {timeout:.0f} s", "check the disk and the venv"
            )
    if process.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        return fail(name, f"{python}: {lines[-1] if lines else 'exit code ' + str(process.returncode)}", fix)
    transformers_version, diffusers_version = [*stdout.split(), "?", "?"][:2]
    return ok(name, f"{python} (transformers {transformers_version}, diffusers {diffusers_version})")


def _sd_scripts_modules_check(folder: Path, python: Path, name: str, fix: str) -> Check:
    """Whether sd-scripts' interpreter finds its modules, without importing them (a find_spec per module)."""
    code = f"import importlib.util as u\nprint(' '.join(m for m in {SD_SCRIPTS_MODULES!r} if u.find_spec(m) is None))"
    try:
        completed = subprocess.run(
            [str(python), "-c", code], cwd=folder, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return fail(name, f"{python} cannot run: {error}", fix)
    if completed.returncode != 0:  # find_spec of library.train_util imports the `library` package itself
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return fail(name, f"{python}: {lines[-1] if lines else 'exit code ' + str(completed.returncode)}", fix)
    missing = completed.stdout.split()
    if missing:
        return fail(name, f"{python}: No module named {', '.join(repr(module) for module in missing)}", fix)
    return ok(name, f"{python}: sd-scripts' modules are installed (not imported: the run stops on the failures)")


def kohya_model_file_checks(config: ZireliaConfig) -> list[Check]:
    """The files sd-scripts loads: the base model, and for FLUX also CLIP-L, T5-XXL and the autoencoder; an
    "auto" row says what it resolved to in [generator] model's repository, or the download it lacks.

    Judged as the training stage judges them before it launches (training/kohya_env.py): a hub id is a valid
    SDXL/SD1.5 base model, and a .safetensors file must have a readable header and all the bytes it announces
    (a partial download is the usual problem; reading the header takes milliseconds).
    """
    train = config.train
    checks = []
    for key, file in resolve_model_files(config).items():
        name = f"train.{key}"
        if file.auto:
            checks.append(_auto_check(name, file))
            continue
        fix = FLUX_FILES_FIX.get(key, "download the base checkpoint") + f", then set [train] {key} to the file"
        if train.model_type == "flux":
            fix += ' (or leave it "auto" to use [generator] model\'s repository)'
        if file.value is None:
            checks.append(fail(name, "not set (the kohya backend needs it)", fix))
            continue
        value = file.value
        if key == "pretrained_model" and train.model_type != "flux" and looks_like_hub_id(str(value)):
            checks.append(ok(name, f"{value} (a hub id: sd-scripts downloads it)"))
            continue
        path = Path(value).expanduser()
        damage = safetensors_damage(path) if path.is_file() and path.suffix == ".safetensors" else None
        if not path.exists():
            checks.append(
                fail(name, f"[train] {key} points nowhere: {display_path(path)} not found", f"check its path; or {fix}")
            )
        elif key in SINGLE_FILE_KEYS and not path.is_file():
            checks.append(fail(name, f"{display_path(path)} {path_problem(path, 'file')}", fix))
        elif damage is not None:
            checks.append(fail(name, f"[train] {key}: {damage}", f"download it again: {fix}"))
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


def _auto_check(name: str, file: ModelFile) -> Check:
    if file.problem is not None:
        return fail(name, f"auto: {file.problem}", file.fix)
    if file.merge is not None and file.merge_pending:
        folder = file.merge.target.parent
        free = shutil.disk_usage(_existing_parent(folder)).free
        if free < file.merge.total_bytes:
            return fail(
                name,
                f"auto: {file.detail}, but {free / GB:.1f} GB are free there",
                "free disk space, point ZIRELIA_CACHE at a larger disk, or set [train] t5xxl to a single file",
            )
    return ok(name, f"auto: {file.detail}")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
