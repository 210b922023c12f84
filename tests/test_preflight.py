"""The pre-flight: the whole job and each stage command check what their stages need before any work.

Real subprocesses, as a user runs them. What cannot exist here is stood in for and says so: sd-scripts is a
folder with its training script and an empty `library.train_util` (run by this Python, so its interpreter
check imports the real accelerate, transformers and diffusers), and the FLUX single files are small
placeholder safetensors files (the pre-flight reads their headers, not their weights).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import run_cli, write_config
from zirelia_local.cli import build_parser
from zirelia_local.common.files import read_json_object
from zirelia_local.common.rundir import PREFLIGHT_NAME
from zirelia_local.doctor.check import ok, warn
from zirelia_local.doctor.preflight import Preflight, record_preflight
from zirelia_local.report import sections

# Generous against a busy CI machine: the typo case takes about 5 s on 2 shared cores (torch's import is most
# of it), against the minutes of image generation it saves.
FAST_S = 30


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment without GPU, token or HF cache, offline, whatever this machine has."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("ZIRELIA_SD_SCRIPTS", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT")
    }
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def sd_scripts_stand_in(folder: Path) -> Path:
    (folder / "library").mkdir(parents=True)
    (folder / "flux_train_network.py").write_text("")
    (folder / "library" / "__init__.py").write_text("")
    (folder / "library" / "train_util.py").write_text("")
    return folder


def kohya_config(tmp_path: Path, **override: str) -> Path:
    """A kohya-backend config whose every requirement is met, except the keys in `override`."""
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    keys = {"sd_scripts": str(sd_scripts_stand_in(tmp_path / "sd-scripts")), "python": sys.executable}
    for key, name in (("pretrained_model", "flux1-dev"), ("clip_l", "clip_l"), ("t5xxl", "t5xxl_fp16"), ("ae", "ae")):
        save_file({"weight": np.zeros((16, 16), np.float32)}, models / f"{name}.safetensors")
        keys[key] = str(models / f"{name}.safetensors")
    keys.update(override)
    lines = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return write_config(tmp_path, count=2, extra=f'[train]\nbackend = "kohya"\nepochs = 1\n{lines}')


def diffusers_config(tmp_path: Path, extra: str) -> Path:
    return write_config(tmp_path, count=2, extra=f'[train]\nbackend = "diffusers"\nepochs = 1\n{extra}')


def whole_job(config: Path, tmp_path: Path, *args: str, **env: str):
    started = time.monotonic()
    result = run_cli(["-m", "zirelia_local.train", str(config), *args], env=user_env(tmp_path, **env))
    return result, time.monotonic() - started, " ".join(result.stderr.split())


def assert_stopped_before_any_work(result, seconds: float, text: str, run_dir: Path) -> None:
    assert result.returncode == 1, text
    assert "Traceback" not in text
    assert "1 pre-flight check(s) failed" in text and "nothing was started" in text, text
    assert seconds < FAST_S, f"the pre-flight took {seconds:.0f} s"
    assert not run_dir.exists()  # not even created: no image, no lock, no config snapshot


NOWHERE = "/nonexistent/zirelia-test"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "fix"),
    [
        ("t5xxl", "set [train] t5xxl to the file"),  # the typo: the kohya interpreter check runs too
        ("pretrained_model", "set [train] pretrained_model to the file"),
    ],
)
def test_a_kohya_model_file_that_points_nowhere_stops_the_job_before_any_image(tmp_path, key, fix):
    config = kohya_config(tmp_path, **{key: f"{NOWHERE}/{key}.safetensors"})
    result, seconds, text = whole_job(config, tmp_path)
    assert_stopped_before_any_work(result, seconds, text, tmp_path / "run")
    assert f"train.{key}: [train] {key} points nowhere: {NOWHERE}/{key}.safetensors not found" in text
    assert fix in text


@pytest.mark.slow
def test_every_failure_is_listed_together_with_its_fix(tmp_path):
    # The typo, and sd-scripts' interpreter without its packages (a bare venv): both, in one message.
    bare = tmp_path / "bare-venv"
    venv.EnvBuilder(with_pip=False).create(bare)
    config = kohya_config(tmp_path, t5xxl=f"{NOWHERE}/t5xxl.safetensors", python=str(bare / "bin" / "python"))
    result, seconds, text = whole_job(config, tmp_path)
    assert result.returncode == 1 and seconds < FAST_S, text
    assert "2 pre-flight check(s) failed" in text, text
    assert "train.t5xxl: [train] t5xxl points nowhere" in text
    assert "sd-scripts python: " in text and "No module named 'accelerate'" in text
    assert "pip install -r requirements.txt" in text
    assert not (tmp_path / "run").exists()


def test_a_missing_sd_scripts_checkout_stops_the_job_before_any_image(tmp_path):
    config = kohya_config(tmp_path, sd_scripts=f"{NOWHERE}/sd-scripts")
    result, seconds, text = whole_job(config, tmp_path)
    assert_stopped_before_any_work(result, seconds, text, tmp_path / "run")
    assert f"sd-scripts: {NOWHERE}/sd-scripts does not exist" in text
    assert "ZIRELIA_SD_SCRIPTS" in text and 'backend = "diffusers"' in text  # the fix: install it, or the other backend


def test_an_insightface_root_that_points_nowhere_stops_the_job_before_any_image(tmp_path):
    config = diffusers_config(tmp_path, f'[curate]\nembedder = "insightface"\ninsightface_root = "{NOWHERE}"\n')
    result, seconds, text = whole_job(config, tmp_path)
    assert_stopped_before_any_work(result, seconds, text, tmp_path / "run")
    assert f"insightface model files not found: {NOWHERE}/models/buffalo_l does not exist" in text
    assert "fix: download buffalo_l.zip" in text and "[curate] insightface_root" in text


def test_a_clip_weights_file_that_points_nowhere_stops_the_job_before_any_image(tmp_path):
    config = diffusers_config(tmp_path, f'[critic]\nclip_pretrained = "{NOWHERE}/open_clip_model.safetensors"\n')
    result, seconds, text = whole_job(config, tmp_path)
    assert_stopped_before_any_work(result, seconds, text, tmp_path / "run")
    assert f"[critic] clip_pretrained {NOWHERE}/open_clip_model.safetensors does not exist" in text
    assert "fix: set [critic] clip_pretrained to a local open_clip .safetensors file" in text


@pytest.mark.slow
def test_skip_checks_starts_the_job_anyway_and_records_it(tmp_path):
    # The same missing insightface pack, checks skipped: the dataset is drawn, curation then meets the problem.
    config = diffusers_config(tmp_path, f'[curate]\nembedder = "insightface"\ninsightface_root = "{NOWHERE}"\n')
    result, _, text = whole_job(config, tmp_path, "--skip-checks")
    assert result.returncode == 1 and "Traceback" not in text, text
    assert "pre-flight checks skipped (--skip-checks)" in text
    assert "insightface model files not found" in text  # said by curation, after the images were drawn
    run_dir = tmp_path / "run"
    assert len(list((run_dir / "images").glob("*.png"))) == 2
    record = read_json_object(run_dir / PREFLIGHT_NAME)
    assert record is not None
    assert {stage: entry["status"] for stage, entry in record["stages"].items()} == dict.fromkeys(
        ("dataset", "curate", "train", "critic", "report"), "skipped"
    )
    assert record["stages"]["train"]["command"] == "python -m zirelia_local.train"


def test_skip_checks_is_offered_by_the_whole_job_and_every_stage_command():
    parser = build_parser()
    for command in ("run", "dataset", "curate", "train", "critic", "report"):
        assert parser.parse_args([command, "x.toml", "--skip-checks"]).skip_checks
    with pytest.raises(SystemExit):  # caption rewrites text files: it has nothing to check
        parser.parse_args(["caption", "x.toml", "--skip-checks"])
    help_text = " ".join(run_cli(["-m", "zirelia_local.train", "--help"]).stdout.split())
    assert "--skip-checks start without checking first what the stages need" in help_text


@pytest.mark.slow
def test_an_uncached_hub_model_without_network_fails_within_seconds(tmp_path):
    # No hub here: HF_ENDPOINT points at a local socket that accepts connections and never answers, the worst
    # case of a bad network. The access check gives up after a few seconds; under HF_HUB_OFFLINE it is not tried.
    config = diffusers_config(tmp_path, "")
    config.write_text(config.read_text().replace('model = "builtin:tiny-flux"', 'model = "someone/flux-finetune"'))
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        hub = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_" + "x" * 34, "HF_ENDPOINT": endpoint}
        result, seconds, text = whole_job(config, tmp_path, **hub)
    assert result.returncode == 1 and seconds < FAST_S, text
    assert "generator model: someone/flux-finetune: not in the Hugging Face cache" in text
    assert "hub unreachable (no answer in 5 s)" in text
    assert "HTTP Request" not in text  # the HTTP client's own log lines stay quiet
    assert not (tmp_path / "run").exists()
    result, _, text = whole_job(config, tmp_path)
    assert result.returncode == 1 and "HF_HUB_OFFLINE is set" in text


@pytest.mark.slow
def test_a_stage_alone_checks_its_own_needs_and_skipped_checks_are_reported(tmp_path):
    # Training's requirements are broken; the dataset stage does not need them.
    config = kohya_config(tmp_path, sd_scripts=f"{NOWHERE}/sd-scripts", t5xxl=f"{NOWHERE}/t5xxl.safetensors")
    run_dir = tmp_path / "run"
    env = user_env(tmp_path)
    dataset = run_cli(["-m", "zirelia_local", "dataset", str(config)], env=env)
    assert dataset.returncode == 0, dataset.stderr[-2000:]
    assert "checks for dataset passed" in " ".join(dataset.stderr.split())
    assert len(list((run_dir / "images").glob("*.png"))) == 2

    train = run_cli(["-m", "zirelia_local", "train", str(config)], env=env)
    text = " ".join(train.stderr.split())
    assert train.returncode == 1 and "2 pre-flight check(s) failed for train" in text, text
    assert "sd-scripts:" in text and "train.t5xxl:" in text and "Traceback" not in text
    assert not (run_dir / "train").exists()

    report = run_cli(["-m", "zirelia_local", "report", str(config), "--skip-checks"], env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "pre-flight checks skipped (--skip-checks)" in " ".join(report.stderr.split())
    record = read_json_object(run_dir / PREFLIGHT_NAME)
    assert record is not None
    assert {stage: entry["status"] for stage, entry in record["stages"].items()} == {
        "dataset": "passed",  # no GPU is fine for a config that runs on the CPU; CLIP weights are the critic's
        "report": "skipped",
    }
    assert record["stages"]["dataset"]["command"] == "zirelia dataset"
    page = " ".join((run_dir / "report" / "index.html").read_text().split())
    assert "Pre-flight checks were skipped</b> (--skip-checks) before: report." in page


def test_the_record_keeps_each_stage_s_last_pre_flight(tmp_path):
    checks = (ok("python", "3.11"), warn("critic CLIP weights", "none configured", "set clip_pretrained"))
    whole = Preflight(("dataset", "curate", "train", "critic", "report"), skipped=False, checks=checks)
    record_preflight(tmp_path, whole, "python -m zirelia_local.train")
    record_preflight(tmp_path, Preflight(("critic",), skipped=True), "zirelia critic")
    # One row per command that checked stages: the whole job's, less the critic that ran again since.
    rows = sections.preflight(tmp_path)["rows"]
    assert [(row["stages"], row["status"], row["command"]) for row in rows] == [
        (["dataset", "curate", "train", "report"], "passed with warnings", "python -m zirelia_local.train"),
        (["critic"], "skipped", "zirelia critic"),
    ]
    assert rows[0]["warnings"] == ["critic CLIP weights: none configured"]
    assert sections.preflight(tmp_path)["skipped"] == ["critic"]
    never = sections.preflight(tmp_path / "elsewhere")["rows"]
    assert [(row["stages"], row["status"]) for row in never] == [(list(sections.STAGE_NAMES), "not recorded")]
