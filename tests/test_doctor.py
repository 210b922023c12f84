"""`zirelia doctor`: the table, its exit code, and each check on real folders, files and interpreters.

What cannot exist on a CPU machine is stood in for and says so: GPUs are `GpuInfo` rows, and the hub
(unreachable here) is an `access` function passed to the model check.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import REPO, write_config
from tests.onnx_standins import build_pack
from zirelia_local.common.config import CurateConfig, GeneratorConfig, TrainConfig, load_config
from zirelia_local.doctor import STAGES, collect_checks
from zirelia_local.doctor.check import fail
from zirelia_local.doctor.environment import fitting_vram_preset, gpu_checks, vram_check
from zirelia_local.doctor.kohya import (
    kohya_model_file_checks,
    sd_scripts_folder_check,
    sd_scripts_python,
    sd_scripts_python_check,
)
from zirelia_local.doctor.models import (
    cached_pipeline_status,
    device_check,
    generator_model_check,
    gpu_requirement,
    hub_access,
)
from zirelia_local.doctor.resources import (
    critic_clip_check,
    disk_check,
    embedder_check,
    estimate_run_bytes,
    run_dir_check,
)
from zirelia_local.doctor.table import render_table
from zirelia_local.training.presets import GpuInfo

GIB = 1024**3


def doctor_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment without GPU, token, HF cache or sd-scripts, whatever this machine has."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ZIRELIA_SD_SCRIPTS", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")
    }
    env.update(
        HF_HOME=str(tmp_path / "hf"),  # empty cache, no stored token
        HF_HUB_OFFLINE="1",  # never touch the network from tests
        CUDA_VISIBLE_DEVICES="",  # the same answer on a CI machine that happens to have a GPU
        ZIRELIA_NO_PROGRESS="1",
    )
    return env


def run_doctor_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zirelia_local.cli", "doctor", *args],
        cwd=REPO,
        env=doctor_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def parse_table(text: str) -> dict[str, tuple[str, str, str]]:
    """The printed table back as {check: (status, detail, fix)}, wrapped cell lines joined."""
    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0]:
            current = rows.setdefault(cells[0], ["", "", "", ""])
        if current is None:
            continue
        for index, cell in enumerate(cells):
            if cell:
                current[index] = f"{current[index]} {cell}".strip()
    # A wrapped check name would start a new row: names are short and never wrap.
    return {name: (cells[1], cells[2], cells[3]) for name, cells in rows.items()}


def test_doctor_sienna_on_a_cpu_machine_fails_naming_gpu_weights_and_sd_scripts(tmp_path: Path) -> None:
    result = run_doctor_cli(["configs/sienna.toml"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    table = parse_table(result.stdout)
    failed = {name for name, (status, _, _) in table.items() if status == "FAIL"}
    assert failed == {
        "cuda",
        "generator model",
        "sd-scripts",
        "train.pretrained_model",
        "train.clip_l",
        "train.t5xxl",
        "train.ae",
    }
    assert table["embedder (dlib)"][0] == "ok" and table["python"][0] == "ok"
    assert "no Hugging Face token" in table["generator model"][1] and "HF_TOKEN" in table["generator model"][2]
    assert "ZIRELIA_SD_SCRIPTS" in table["sd-scripts"][1]
    # No model path in the config: each "auto" row names the one download generation and training share.
    for key in ("pretrained_model", "clip_l", "t5xxl", "ae"):
        status, detail, fix = table[f"train.{key}"]
        assert status == "FAIL"
        assert detail.startswith("auto: black-forest-labs/FLUX.1-dev is not in the Hugging Face cache"), detail
        assert fix.startswith("hf download black-forest-labs/FLUX.1-dev --exclude flux1-dev.safetensors"), fix
    assert all(table[name][2] for name in failed)  # every failing row says the fix
    summary = " ".join(result.stderr.split())
    assert "the configured run cannot start: cuda, generator model, sd-scripts" in summary


def test_doctor_demo_passes_on_a_cpu_machine(tmp_path: Path) -> None:
    result = run_doctor_cli(["configs/demo.toml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    table = parse_table(result.stdout)
    assert {status for status, _, _ in table.values()} <= {"ok", "warn"}
    assert table["generator model"][0] == "ok" and "builtin:tiny-flux" in table["generator model"][1]
    assert table["training backend"][0] == "ok"
    assert "ready" in result.stderr


def test_environment_only_checks_have_no_config_rows() -> None:
    names = [check.name for check in collect_checks(None)]
    assert names[:2] == ["python", "torch"]
    assert "cuda" in names and "vram preset" in names
    assert "generator model" not in names and "sd-scripts" not in names


def test_checks_for_some_stages_keep_only_their_rows() -> None:
    config = load_config(REPO / "configs" / "demo.toml")
    whole = [check.name for check in collect_checks(config)]
    assert whole == [check.name for check in collect_checks(config, stages=STAGES)]  # the default is every stage
    environment = [check.name for check in collect_checks(None)]

    report_only = [check.name for check in collect_checks(config, stages=["report"])]
    assert report_only == [*environment, "run dir"]  # the report loads no model; it writes report/ only

    training = {check.name: check for check in collect_checks(config, stages=["train"])}
    assert {"device", "training backend", "disk (run dir)"} <= set(training)
    assert "embedder (dlib)" not in training and "generator model" in training  # the diffusers backend trains it
    assert "LoRA epochs" in training["disk (run dir)"].detail
    assert "dataset images" not in training["disk (run dir)"].detail

    curation = [check.name for check in collect_checks(config, stages=["curate"])]
    assert "embedder (dlib)" in curation and "generator model" in curation and "training backend" not in curation


def test_unknown_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="training"):
        collect_checks(None, stages=["training"])


def test_gpu_requirement_follows_the_stages() -> None:
    config = load_config(REPO / "configs" / "sienna.toml")
    assert gpu_requirement(config) is not None  # a FLUX-size model
    assert gpu_requirement(config, ["report"]) is None


def test_invalid_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[persona]\nname = "x"\n')
    from zirelia_local.cli import main

    assert main(["doctor", str(path)]) == 2


# --- sd-scripts --------------------------------------------------------------------------------------------


def test_sd_scripts_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    check = sd_scripts_folder_check(None)
    assert check.status == "FAIL" and "ZIRELIA_SD_SCRIPTS" in check.detail
    assert "48d368fa" in check.fix and 'backend = "diffusers"' in check.fix


def test_sd_scripts_folder_missing_or_without_the_train_script(tmp_path: Path) -> None:
    missing = sd_scripts_folder_check(tmp_path / "nowhere")
    assert missing.status == "FAIL" and "does not exist" in missing.detail
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train_network.py").write_text("")
    no_flux = sd_scripts_folder_check(tmp_path / "other", "flux")
    assert no_flux.status == "FAIL" and "flux_train_network.py" in no_flux.detail
    assert sd_scripts_folder_check(tmp_path / "other", "sd15").status == "ok"


def test_sd_scripts_python_resolution(tmp_path: Path) -> None:
    assert sd_scripts_python(tmp_path, None) == Path(sys.executable)
    interpreter = tmp_path / "venv" / "bin" / "python"
    interpreter.parent.mkdir(parents=True)
    interpreter.write_text("")
    assert sd_scripts_python(tmp_path, None) == interpreter
    assert sd_scripts_python(tmp_path, Path("/usr/bin/python3")) == Path("/usr/bin/python3")


def _library_stand_in(folder: Path) -> Path:
    # CI has no sd-scripts checkout: an empty `library.train_util` module stands in for its package, so the
    # import check below exercises the real interpreters' third-party imports (accelerate, transformers, diffusers).
    (folder / "library").mkdir(parents=True)
    (folder / "library" / "__init__.py").write_text("")
    (folder / "library" / "train_util.py").write_text("")
    return folder


def test_sd_scripts_python_without_its_requirements_fails(tmp_path: Path) -> None:
    folder = _library_stand_in(tmp_path / "sd")
    bare = tmp_path / "bare-venv"
    venv.EnvBuilder(with_pip=False).create(bare)
    check = sd_scripts_python_check(folder, bare / "bin" / "python", timeout=60)
    assert check.status == "FAIL"
    assert "No module named 'accelerate'" in check.detail
    assert "pip install -r requirements.txt" in check.fix


def test_sd_scripts_python_stopped_early_looks_its_modules_up_without_importing(tmp_path: Path) -> None:
    # The pre-flight stops the slow import when other checks failed: a missing package is still reported.
    folder = _library_stand_in(tmp_path / "sd")
    # The real library.train_util takes seconds to import (torch and more); the stand-in takes longer.
    (folder / "library" / "train_util.py").write_text("import time\ntime.sleep(120)\n")
    bare = tmp_path / "bare-venv"
    venv.EnvBuilder(with_pip=False).create(bare)
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    missing = sd_scripts_python_check(folder, bare / "bin" / "python", timeout=60, stop=stop)
    assert missing.status == "FAIL" and "No module named 'accelerate', 'transformers', 'diffusers'" in missing.detail
    found = sd_scripts_python_check(folder, Path(sys.executable), timeout=60, stop=stop)
    assert found.status == "ok" and "not imported" in found.detail
    assert time.monotonic() - started < 30  # neither waited for the import


def test_sd_scripts_python_that_does_not_exist_fails(tmp_path: Path) -> None:
    check = sd_scripts_python_check(tmp_path, tmp_path / "venv" / "bin" / "python")
    assert check.status == "FAIL" and "does not exist" in check.detail


def test_sd_scripts_python_with_its_requirements_passes(tmp_path: Path) -> None:
    folder = _library_stand_in(tmp_path / "sd")
    check = sd_scripts_python_check(folder, Path(sys.executable), timeout=120)
    assert check.status == "ok", check
    assert "transformers" in check.detail


def _real_sd_scripts() -> Path | None:
    folder = os.environ.get("ZIRELIA_SD_SCRIPTS")
    if folder and (Path(folder) / "flux_train_network.py").is_file():
        return Path(folder)
    return None


@pytest.mark.sd_scripts
@pytest.mark.slow
@pytest.mark.skipif(_real_sd_scripts() is None, reason="needs a real sd-scripts checkout in ZIRELIA_SD_SCRIPTS")
def test_real_sd_scripts_checkout_passes() -> None:
    folder = _real_sd_scripts()
    assert folder is not None
    assert sd_scripts_folder_check(folder).status == "ok"
    check = sd_scripts_python_check(folder, sd_scripts_python(folder, None))
    assert check.status == "ok", check


def test_kohya_model_files(tmp_path: Path) -> None:
    files = {}
    for key in ("pretrained_model", "clip_l", "t5xxl", "ae"):
        files[key] = tmp_path / f"{key}.safetensors"
        save_file({"weight": np.zeros((16, 16), np.float32)}, files[key])  # small, but real safetensors files
    config = load_config(write_config(tmp_path))
    for key, path in files.items():
        setattr(config.train, key, str(path))
    present = kohya_model_file_checks(config)
    assert [check.status for check in present] == ["ok"] * 4
    files["t5xxl"].unlink()
    t5 = next(check for check in kohya_model_file_checks(config) if check.name == "train.t5xxl")
    assert t5.status == "FAIL" and "t5xxl_fp16.safetensors" in t5.fix and '"auto"' in t5.fix
    # An interrupted download: the training stage would refuse it, so the pre-flight does already.
    files["ae"].write_bytes(files["ae"].read_bytes()[:-100])
    ae = next(check for check in kohya_model_file_checks(config) if check.name == "train.ae")
    assert ae.status == "FAIL" and "is truncated" in ae.detail and "download it again" in ae.fix
    for key in files:
        setattr(config.train, key, None)
    unset = kohya_model_file_checks(config)
    assert all(check.status == "FAIL" and "not set" in check.detail for check in unset)
    config.train.model_type = "sdxl"
    assert len(kohya_model_file_checks(config)) == 1
    config.train.pretrained_model = "stabilityai/sdxl-base"
    assert kohya_model_file_checks(config)[0].status == "ok"  # sd-scripts loads an SDXL base model by hub id
    # "auto" with the embedded test model as the generator: nothing to find, and the row says why.
    config.train.model_type = "flux"
    config.train.ae = "auto"
    auto = next(check for check in kohya_model_file_checks(config) if check.name == "train.ae")
    assert auto.status == "FAIL" and "embedded test model" in auto.detail and "[train] ae" in auto.fix


# --- GPU and VRAM (GPUs are stand-ins: none exists on the CPU machines this runs on) ------------------------


@pytest.mark.parametrize(
    ("total_bytes", "preset"),
    [
        (8 * GIB, None),
        (12_884_901_888, "12gb"),  # RTX 3060 12 GB
        (17_171_480_576, "16gb"),  # RTX 4080 16 GB
        (25_386_352_640, "24gb"),  # RTX 4090 24 GB
        (42_505_273_344, "40gb"),  # A100 40 GB
        (85_017_624_576, "80gb"),  # H100 80 GB
        (150_000_000_000, "80gb"),  # H200
    ],
)
def test_fitting_vram_preset(total_bytes: int, preset: str | None) -> None:
    assert fitting_vram_preset(total_bytes) == preset


def test_vram_check_uses_the_smallest_training_gpu_and_flags_a_preset_too_large() -> None:
    gpus = [GpuInfo(0, "big", 85_017_624_576, None), GpuInfo(1, "small", 25_386_352_640, None)]
    assert "24gb fits gpu 1" in vram_check(gpus, TrainConfig(num_processes=2)).detail
    assert "80gb fits gpu 0" in vram_check(gpus, TrainConfig(num_processes=1)).detail
    too_large = vram_check(gpus[1:], TrainConfig(vram="40gb"))
    assert too_large.status == "warn" and "out-of-memory" in too_large.detail
    assert vram_check([GpuInfo(0, "tiny", 6 * GIB, None)], None).status == "warn"


def test_gpu_rows() -> None:
    assert gpu_checks([], "no CUDA GPU visible", gpu_required="FLUX needs one")[0].status == "FAIL"
    no_gpu = gpu_checks([], "no CUDA GPU visible", gpu_required=None)[0]
    assert no_gpu.status == "warn" and "NVIDIA GPU" in no_gpu.fix  # a warning says what to do about it
    # A config that runs on the CPU (the demo) has nothing to warn about.
    assert gpu_checks([], "no CUDA GPU visible", gpu_required=None, for_config=True)[0].status == "ok"
    rows = gpu_checks([GpuInfo(0, "NVIDIA H100", 80 * GIB, 79 * GIB)], "CUDA 13.0 build, 1 GPU(s)", gpu_required="x")
    assert [row.status for row in rows] == ["ok", "ok"] and "79.0 GiB free" in rows[1].detail


def test_device_rows(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, extra="[train]\nnum_processes = 2\n"))
    assert device_check(config, []).status == "FAIL"
    config.train.num_processes = 1
    assert device_check(config, []).detail == "cpu"
    config.generator.model = "black-forest-labs/FLUX.1-dev"
    assert device_check(config, []) is None  # the cuda row carries the failure
    config.generator.device = "cpu"
    on_cpu = device_check(config, [GpuInfo(0, "gpu", 24 * GIB, None)])
    assert on_cpu.status == "FAIL" and 'device = "auto"' in on_cpu.fix
    config.generator.device = "auto"
    twelve = device_check(config, [GpuInfo(0, "RTX 3060", 12 * GIB, None)])
    if importlib.util.find_spec("bitsandbytes") is None:  # not installed here: auto says why it is not nf4
        assert twelve.status == "warn" and "bitsandbytes is not installed" in twelve.detail
        assert "quantization fp8_storage" in twelve.detail and "pip install bitsandbytes" in twelve.fix


def test_a_launch_of_more_processes_than_gpus_fails_the_device_row(tmp_path: Path, monkeypatch) -> None:
    # The launcher's environment of a process of `accelerate launch --num_processes 4` on one machine (the GPUs
    # are a list of what torch would report: there is no GPU here).
    config = load_config(write_config(tmp_path))
    config.generator.device = "auto"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    two = [GpuInfo(0, "gpu", 80 * GIB, None), GpuInfo(1, "gpu", 80 * GIB, None)]
    row = device_check(config, two)
    assert row.status == "FAIL" and "4 processes on this machine but 2 GPU(s)" in row.detail
    assert "at most 2 process(es)" in row.fix
    config.generator.device = "cuda:0"  # every process on the one GPU it names: allowed
    assert device_check(config, two).status != "FAIL"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines of two processes each
    config.generator.device = "auto"
    assert device_check(config, two).status != "FAIL"


# --- generator model ----------------------------------------------------------------------------------------


def _no_network(repo: str, token: str | None) -> tuple[bool | None, str]:
    raise AssertionError("the doctor must not ask the hub here")


def test_generator_model_builtin_and_local_folders(tmp_path: Path, tiny_flux_dir: Path) -> None:
    assert generator_model_check(GeneratorConfig(model="builtin:tiny-flux"), _no_network).status == "ok"
    assert generator_model_check(GeneratorConfig(model=str(tiny_flux_dir)), _no_network).status == "ok"
    (tmp_path / "empty").mkdir()
    check = generator_model_check(GeneratorConfig(model=str(tmp_path / "empty")), _no_network)
    assert check.status == "FAIL" and "model_index.json" in check.detail


def _hub_cache_with(tmp_path: Path, repo_id: str, pipeline_dir: Path) -> Path:
    """A Hugging Face cache in its on-disk layout, holding `pipeline_dir` as the snapshot of `repo_id`."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(pipeline_dir, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_generator_model_from_the_hub_cache(
    tmp_path: Path, tiny_flux_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _hub_cache_with(tmp_path, "someone/tiny-flux", tiny_flux_dir)
    cached = generator_model_check(GeneratorConfig(model="someone/tiny-flux"), _no_network)
    assert cached.status == "ok" and "cached" in cached.detail
    for weights in (snapshot / "transformer").glob("*.safetensors"):
        weights.unlink()
    complete, detail = cached_pipeline_status("someone/tiny-flux", cache_dir=tmp_path / "hub")
    assert not complete and "transformer" in detail


def test_generator_model_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    gated = generator_model_check(GeneratorConfig(), _no_network)
    assert gated.status == "FAIL" and "no Hugging Face token" in gated.detail and "HF_TOKEN" in gated.fix

    # The hub cannot be reached from here: its answers are stood in for by `access`.
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    granted = generator_model_check(GeneratorConfig(), lambda repo, token: (True, "access granted"))
    assert granted.status == "warn" and "downloads it" in granted.detail
    assert "hf_xxx" not in granted.detail + granted.fix  # the token itself is never shown
    refused = generator_model_check(GeneratorConfig(), lambda repo, token: (False, "gated"))
    assert refused.status == "FAIL" and "accept the licence" in refused.fix
    offline = generator_model_check(GeneratorConfig(), lambda repo, token: (None, "hub unreachable"))
    assert offline.status == "FAIL" and "hf download" in offline.fix


def test_hub_access_offline_answers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_access("black-forest-labs/FLUX.1-dev", None) == (None, "HF_HUB_OFFLINE is set")


# --- embedder, disk ------------------------------------------------------------------------------------------


def test_embedder_rows(tmp_path: Path) -> None:
    assert embedder_check(CurateConfig(), []).status == "ok"  # dlib's .dat files ship with the package
    root = tmp_path / "insightface"
    # The embedder never downloads (faces/insightface_embedder.py): a missing pack stops the run.
    absent = embedder_check(CurateConfig(embedder="insightface", insightface_root=root), [])
    assert absent.status == "FAIL" and "does not exist" in absent.detail
    assert "[curate] insightface_root" in absent.fix
    (root / "models" / "buffalo_l").mkdir(parents=True)
    empty = embedder_check(CurateConfig(embedder="insightface", insightface_root=root), [])
    assert empty.status == "FAIL" and "no .onnx" in empty.detail
    build_pack(root, detector=False)
    no_detector = embedder_check(CurateConfig(embedder="insightface", insightface_root=root), [])
    assert no_detector.status == "FAIL" and "no detection model" in no_detector.detail
    build_pack(root)
    present = embedder_check(CurateConfig(embedder="insightface", insightface_root=root, device="cpu"), [])
    assert present.status == "ok" and "det_10g.onnx" in present.detail and "w600k_r50.onnx" in present.detail


def test_critic_clip_rows(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    unset = critic_clip_check(config)
    assert unset.status == "warn" and "prompt adherence will not be scored" in unset.detail
    config.critic.clip_pretrained = str(tmp_path / "nowhere" / "open_clip_model.safetensors")
    missing = critic_clip_check(config)
    assert missing.status == "FAIL" and "does not exist" in missing.detail and "clip_pretrained" in missing.fix
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"\0" * 16)
    config.critic.clip_pretrained = str(weights)
    assert critic_clip_check(config).status == "ok"
    pickled = tmp_path / "clip.bin"
    pickled.write_bytes(b"\0" * 16)
    config.critic.clip_pretrained = str(pickled)
    assert critic_clip_check(config).status == "FAIL"  # pickles only with [run] allow_pickle
    config.critic.clip_pretrained = "laion2b_s34b_b79k"
    assert critic_clip_check(config).status == "warn"  # an open_clip tag: fetched on first use


def test_run_dir_rows(tmp_path: Path) -> None:
    assert run_dir_check(tmp_path).status == "ok"
    later = run_dir_check(tmp_path / "a" / "b")
    assert later.status == "ok" and "will be created in" in later.detail
    assert not (tmp_path / "a").exists()  # the probe creates nothing where the run will go
    (tmp_path / "file").write_text("x")
    under_a_file = run_dir_check(tmp_path / "file" / "run")
    assert under_a_file.status == "FAIL" and "is a file" in under_a_file.detail and "--run-dir" in under_a_file.fix
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # no probe file left behind


def test_run_size_estimate_follows_the_config() -> None:
    config = load_config(REPO / "configs" / "sienna.toml")
    parts = estimate_run_bytes(config)
    assert parts["dataset images"] == 40 * 2 * int(1024**2 * 1.5)
    assert parts["LoRA epochs"] == 20 * int(32 * 5.4e6)
    assert "kohya caches" in parts
    config.dataset.count = 400
    assert estimate_run_bytes(config)["dataset images"] == 10 * parts["dataset images"]


def test_disk_check(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert disk_check("disk", tmp_path / "not" / "yet", 1, "the run").status == "ok"
    short = disk_check("disk", tmp_path, free * 10, "the run")
    assert short.status == "FAIL" and "free" in short.fix


def test_doctor_table_escapes_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    render_table([fail("x", "[train] sd_scripts", "set [train] python")], "t")
    out = capsys.readouterr().out
    assert "[train] sd_scripts" in out and "set [train] python" in out
