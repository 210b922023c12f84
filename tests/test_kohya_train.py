"""train_kohya before and after sd-scripts runs: pre-flight errors, the dry run, failure diagnoses.

sd-scripts itself is not installed in CI. Where a checkout folder must exist for a check to be reached,
the test lays out the two files the check looks for (a stand-in for a checkout; nothing runs them). The
interpreters are real: a fresh virtual environment with none of sd-scripts' requirements, as users get
when [train] python points at the wrong venv. The opt-in test_kohya_integration.py runs the real thing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import REPO, run_cli, write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.training.diagnose import FailureContext, diagnose_failure
from zirelia_local.training.kohya import train_kohya
from zirelia_local.training.kohya_env import safetensors_damage
from zirelia_local.training.outputs import train_dir


@pytest.fixture(autouse=True)
def _no_sd_scripts_from_the_environment(monkeypatch):
    monkeypatch.delenv("ZIRELIA_SD_SCRIPTS", raising=False)


def stand_in_checkout(folder: Path) -> Path:
    """The two files sd_scripts_problem looks for (stand-in: sd-scripts is not installed in CI)."""
    (folder / "library").mkdir(parents=True)
    (folder / "library" / "train_util.py").write_text("# stand-in\n")
    (folder / "flux_train_network.py").write_text("# stand-in\n")
    return folder


def model_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for key in ("pretrained_model", "clip_l", "t5xxl", "ae"):
        files[key] = folder / f"{key}.safetensors"
        save_file({"weight": torch.zeros(4, 4)}, str(files[key]))
    return files


def kohya_config(tmp_path: Path, train: str = "", files: dict[str, Path] | None = None):
    lines = "".join(f"{key} = '{path}'\n" for key, path in (files or {}).items())
    return load_config(write_config(tmp_path, extra=f"[train]\nbackend = 'kohya'\n{lines}{train}"))


def test_missing_sd_scripts_is_a_clear_error(tmp_path):
    config = kohya_config(tmp_path, files=model_files(tmp_path / "models"))
    with pytest.raises(ZireliaError, match="no sd-scripts checkout is configured") as caught:
        train_kohya(config)
    assert "git clone" in caught.value.hint and "ZIRELIA_SD_SCRIPTS" in caught.value.hint

    config.train.sd_scripts = tmp_path / "nowhere"
    with pytest.raises(ZireliaError, match="does not exist"):
        train_kohya(config)


def test_a_checkout_without_the_flux_trainer_is_named(tmp_path):
    folder = stand_in_checkout(tmp_path / "old-sd-scripts")
    (folder / "flux_train_network.py").unlink()
    config = kohya_config(tmp_path, f"sd_scripts = '{folder}'\n", model_files(tmp_path / "models"))
    with pytest.raises(ZireliaError, match=r"has no flux_train_network\.py"):
        train_kohya(config)


def test_a_python_without_sd_scripts_requirements_is_diagnosed(tmp_path):
    folder = stand_in_checkout(tmp_path / "sd-scripts")
    # A real interpreter with no packages at all, where sd-scripts' own venv is looked for first.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    config = kohya_config(tmp_path, f"sd_scripts = '{folder}'\n", model_files(tmp_path / "models"))
    with pytest.raises(ZireliaError) as caught:
        train_kohya(config)
    message = str(caught.value)
    assert "venv/bin/python lacks sd-scripts' requirements" in message
    assert "torch" in message and "accelerate" in message and "voluptuous" in message
    assert "library" not in message.split("cannot import:")[1].split(")")[0]  # the checkout's own package is found
    assert "[train] python" in caught.value.hint

    config.train.python = tmp_path / "no-such-python"
    with pytest.raises(ZireliaError, match="no-such-python does not exist"):
        train_kohya(config)


def test_missing_and_truncated_model_files_are_listed(tmp_path):
    folder = stand_in_checkout(tmp_path / "sd-scripts")
    files = model_files(tmp_path / "models")
    files["t5xxl"].write_bytes(files["t5xxl"].read_bytes()[:-10])  # an interrupted download
    files["ae"].unlink()
    del files["clip_l"]
    config = kohya_config(tmp_path, f"sd_scripts = '{folder}'\npython = '{sys.executable}'\n", files)
    with pytest.raises(ZireliaError) as caught:
        train_kohya(config)
    message = str(caught.value)
    # Unset, clip_l is "auto", and the embedded test model that generates here has no sd-scripts files.
    assert '[train] clip_l = "auto": [generator] model is builtin:tiny-flux' in message
    assert "ae.safetensors does not exist" in message
    assert "t5xxl.safetensors is truncated" in message
    assert "pretrained_model" not in message


def test_safetensors_damage_checks_the_header_and_size(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(8)}, str(good))
    assert safetensors_damage(good) is None
    (tmp_path / "text.safetensors").write_text("<html>rate limited</html>")
    assert "not a safetensors file" in safetensors_damage(tmp_path / "text.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01")
    assert "too short" in safetensors_damage(tmp_path / "tiny.safetensors")


def test_a_finished_run_is_not_trained_again(tmp_path):
    config = kohya_config(tmp_path, "epochs = 2\n")
    folder = train_dir(config)
    folder.mkdir(parents=True)
    for name, epoch in (("testpersona7-000001.safetensors", 1), ("testpersona7.safetensors", 2)):
        save_file({"w": torch.zeros(2)}, str(folder / name), metadata={"ss_epoch": str(epoch)})
    result = train_kohya(config)  # no sd-scripts needed: nothing to launch
    assert result.epoch_files == {1: folder / "testpersona7-000001.safetensors", 2: folder / "testpersona7.safetensors"}


def dry_run(config_path: Path) -> subprocess.CompletedProcess:
    return run_cli(["-m", "zirelia_local.cli", "train", str(config_path), "--dry-run"], env={"ZIRELIA_SD_SCRIPTS": ""})


def test_dry_run_prints_a_copyable_command_and_warns_about_each_missing_part(tmp_path):
    config_path = write_config(tmp_path, extra="[train]\npretrained_model = 'models/flux1-dev.safetensors'\n")
    completed = dry_run(config_path)
    assert completed.returncode == 0, completed.stderr
    stderr = " ".join(completed.stderr.split())
    for expected in (
        "no sd-scripts checkout is configured",
        "[train] pretrained_model = 'models/flux1-dev.safetensors'",
        '[train] clip_l = "auto": [generator] model is builtin:tiny-flux, the embedded test model',
        '[train] t5xxl = "auto"',
        '[train] ae = "auto"',
        "no generated images",
        "fell back to the 24gb preset",
    ):
        assert expected in stderr, expected

    first, rest = completed.stdout.split(" &&", 1)
    assert shlex.split(first) == ["cd", "/path/to/sd-scripts"]
    argv = shlex.split(rest.replace("\\\n", " "))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert "/path/to/sd-scripts/flux_train_network.py" in argv
    assert argv[argv.index("--pretrained_model_name_or_path") + 1] == str(REPO / "models" / "flux1-dev.safetensors")
    assert argv[argv.index("--clip_l") + 1] == "/path/to/clip_l.safetensors"
    assert not (tmp_path / "run" / "train").exists()  # a dry run trains nothing and writes no run state


def test_dry_run_writes_the_dataset_toml_the_command_reads(tmp_path, tiny_flux_dir):
    from zirelia_local.dataset import run_dataset

    config_path = write_config(tmp_path, count=2, extra="[train]\nvram = '16gb'\nnum_repeats = 3\n")
    run_dataset(load_config(config_path))
    completed = dry_run(config_path)
    assert completed.returncode == 0, completed.stderr
    argv = shlex.split(completed.stdout.split(" &&", 1)[1].replace("\\\n", " "))
    toml_path = Path(argv[argv.index("--dataset_config") + 1])
    dataset = tomllib.loads(toml_path.read_text())["datasets"][0]
    # The 16gb FLUX preset trains at batch 1 and 768 px; the 64 px demo images cap the resolution.
    assert (dataset["batch_size"], dataset["resolution"]) == (1, 64)
    assert dataset["subsets"][0]["num_repeats"] == 3
    assert argv[argv.index("--blocks_to_swap") + 1] == "8"


def context(preset: str = "24gb", returncode: int = 1, **kwargs) -> FailureContext:
    return FailureContext(
        returncode=returncode,
        log_path=Path("/runs/x/train/train.log"),
        preset=preset,
        model_type="flux",
        python=Path("/opt/sd-scripts/venv/bin/python"),
        sd_scripts=Path("/opt/sd-scripts"),
        **kwargs,
    )


LAUNCHER_TAIL = [
    "Traceback (most recent call last):",
    '  File "/opt/sd-scripts/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 795, in '
    "simple_launcher",
    "    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)",
    "subprocess.CalledProcessError: Command '['/opt/sd-scripts/venv/bin/python', 'flux_train_network.py']' returned "
    "non-zero exit status 1.",
]
# bitsandbytes logs this on every start; it must not be taken for the failure.
BNB_WARNING = (
    "2026-11-24 19:32:34 WARNING  Failed to load CPU gemm_4bit_forward from kernels-community: No module named "
    "'kernels'. Please make sure you already `pip install kernels` and the kernels >=    ops.py:252"
)
OOM_TAIL = [
    BNB_WARNING,
    "steps:   3%|▎         | 2/80 [00:09<06:01,  4.63s/it, avr_loss=0.412]",
    "Traceback (most recent call last):",
    '  File "/opt/sd-scripts/train_network.py", line 1458, in train',
    "    accelerator.backward(loss)",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 72.00 MiB. GPU 0 has a total capacity of 23.55 GiB "
    "of which 41.06 MiB is free. Including non-PyTorch memory, this process has 23.49 GiB memory in use.",
    *LAUNCHER_TAIL,
]


def test_out_of_memory_suggests_the_next_smaller_preset():
    error = diagnose_failure(OOM_TAIL, context("24gb"))
    assert "ran out of GPU memory" in error.message and "24gb" in error.message
    assert 'vram = "16gb"' in error.hint and "resumes" in error.hint


def test_out_of_memory_at_the_smallest_preset_suggests_more_block_swapping():
    error = diagnose_failure(OOM_TAIL, context("12gb", blocks_to_swap=16))
    assert "blocks_to_swap = 22" in error.hint and "fp8 T5-XXL" in error.hint


def test_the_trainers_own_exception_wins_over_warnings():
    # Lines of a real failed run (sd-scripts 48d368fa, a dataset with bucket_reso_steps 16).
    tail = [
        BNB_WARNING,
        "AssertionError: bucket_reso_steps is 16. it must be divisible by 64.",
        "bucket_reso_stepsが16です。64で割り切れる必要があります",
        *LAUNCHER_TAIL,
    ]
    error = diagnose_failure(tail, context())
    assert "failed check: bucket_reso_steps is 16. it must be divisible by 64." in error.message


@pytest.mark.parametrize(
    ("tail", "returncode", "message", "hint"),
    [
        (
            [BNB_WARNING, "ModuleNotFoundError: No module named 'library'", *LAUNCHER_TAIL],
            1,
            "could not import `library`",
            "[train] python",
        ),
        (
            [
                "/usr/bin/python3: Error while finding module specification for 'accelerate.commands.launch' "
                "(ModuleNotFoundError: No module named 'accelerate')"
            ],
            1,
            "could not import `accelerate`",
            "pip install -r requirements.txt",
        ),
        (
            ["ModuleNotFoundError: No module named 'bitsandbytes'"],
            1,
            "needs bitsandbytes",
            'optimizer = "AdamW"',
        ),
        (
            [
                "usage: flux_train_network.py [-h] [--console_log_level {DEBUG,INFO,WARNING,ERROR,CRITICAL}]",
                "flux_train_network.py: error: unrecognized arguments: --blocks_to_swap 16",
            ],
            2,
            "does not accept --blocks_to_swap 16",
            "git pull",
        ),
        (
            ["FileNotFoundError: [Errno 2] No such file or directory: '/models/ae.safetensors'", *LAUNCHER_TAIL],
            1,
            "could not find /models/ae.safetensors",
            "[train]",
        ),
        (
            ["safetensors_rust.SafetensorError: Error while deserializing header: MetadataIncompleteBuffer"],
            1,
            "truncated or not a safetensors file",
            "download it again",
        ),
        (
            [
                "OSError: Can't load tokenizer for 'openai/clip-vit-large-patch14'. If you were trying to load it "
                "from 'https://huggingface.co/models', make sure you don't have a local directory with the same name."
            ],
            1,
            "download from the Hugging Face hub",
            "tokenizer_cache_dir",
        ),
        (
            [
                "subprocess.CalledProcessError: Command '['python', 'flux_train_network.py']' died with "
                "<Signals.SIGKILL: 9>."
            ],
            1,
            "killed",
            "swap",
        ),
        (["RuntimeError: Torch not compiled with CUDA enabled", *LAUNCHER_TAIL], 1, "cannot use the GPU", "CUDA"),
        (["ValueError: something new", *LAUNCHER_TAIL], 1, "stopped with ValueError: something new", "--dry-run"),
        (["some last line"], 3, "exited with code 3", "read the whole log"),
    ],
)
def test_known_failures_get_a_diagnosis(tail, returncode, message, hint):
    error = diagnose_failure(tail, context(returncode=returncode))
    assert message in error.message
    assert hint in error.hint
