"""The command line as a user meets it: entry points, --run-dir, the run lock, the demo."""

from __future__ import annotations

import shutil

from tests.conftest import REPO, run_cli, write_config
from zirelia_local.cli import build_parser
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.rundir import run_lock


def test_zirelia_has_a_subcommand_per_stage():
    help_text = build_parser().format_help()
    for command in ("run", "dataset", "curate", "caption", "train", "critic", "report", "doctor"):
        assert command in help_text


def test_console_script_is_installed():
    script = shutil.which("zirelia")
    if script is None:  # not installed into this interpreter's PATH (e.g. a bare checkout)
        result = run_cli(["-m", "zirelia_local", "--version"])
    else:
        import subprocess

        result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "zirelia-local" in result.stdout


def test_run_dir_override(tmp_path):
    path = write_config(tmp_path, count=2)
    other = tmp_path / "elsewhere"
    result = run_cli(["-m", "zirelia_local", "dataset", str(path), "--run-dir", str(other)])
    assert result.returncode == 0, result.stderr
    assert len(list((other / "images").glob("*.png"))) == 2
    assert not (tmp_path / "run").exists()
    assert (other / "config.toml").read_text() == path.read_text()


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    path = write_config(tmp_path, count=2)
    config = load_config(path)
    with run_lock(config.run_dir):
        result = run_cli(["-m", "zirelia_local", "dataset", str(path)])
    assert result.returncode == 1
    assert "another zirelia process is working in" in result.stderr


def test_lock_is_reentrant_after_release(tmp_path):
    with run_lock(tmp_path):
        pass
    with run_lock(tmp_path):
        pass
    try:
        with run_lock(tmp_path), run_lock(tmp_path):
            raise AssertionError("a second lock on the same run directory must fail")
    except ZireliaError as error:
        assert "another zirelia process" in error.message


def test_demo_config_runs_end_to_end(tmp_path):
    result = run_cli(
        ["-m", "zirelia_local.train", str(REPO / "configs" / "demo.toml"), "--run-dir", str(tmp_path / "demo")],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "demo" / "train_data").glob("*.txt"))) == 8
    again = run_cli(
        ["-m", "zirelia_local", "dataset", str(REPO / "configs" / "demo.toml"), "--run-dir", str(tmp_path / "demo")]
    )
    assert again.returncode == 0
    assert "already generated and verified" in again.stderr


def test_stages_run_alone_on_an_empty_run_directory_say_what_comes_first(tmp_path):
    """Each stage on a run directory that has nothing for it: exit 1, the missing input, the command to run."""
    # The built-in trainer, so that training's pre-flight passes here (kohya's would stop at the missing
    # sd-scripts checkout, before the empty run directory is noticed).
    path = write_config(tmp_path, count=2, extra='[train]\nbackend = "diffusers"\n')
    expected = {
        "caption": "zirelia dataset CONFIG",
        "curate": "zirelia dataset CONFIG",
        "train": "zirelia dataset CONFIG",
        "critic": "zirelia train CONFIG",
        "report": "python -m zirelia_local.train CONFIG",
    }
    for command, hint in expected.items():
        run_dir = tmp_path / f"empty-{command}"
        result = run_cli(["-m", "zirelia_local", command, str(path), "--run-dir", str(run_dir)])
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 1, (command, output)
        assert "Traceback" not in output and hint in output, (command, output)
        assert not (run_dir / "report").exists()
