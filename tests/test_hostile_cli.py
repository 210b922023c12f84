"""Every command, run as a user would (a real subprocess), with the hostile arguments people really pass:
a missing path, a file where a folder belongs, a folder where a file belongs, an empty file, a place that
cannot be written, a huge image. For each: no traceback, the exit code the README documents (2: the config
or an argument cannot be used; 1: a stage could not finish, or doctor found the run cannot start), and the
offending path in the message.

The paths live in a short folder under /tmp, so that doctor's table (200 columns when not on a terminal)
never folds a path across lines. Most cases end within a second; the few that get as far as loading torch
take a few seconds; all together about a minute on 2 busy cores (each is a fresh Python process), hence
the slow mark.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_config
from tests.hostile import huge_png

pytestmark = pytest.mark.slow

UNWRITABLE = "/proc/1"  # a folder in which no file can be created, not even by root
STAGES = ("run", "dataset", "curate", "caption", "train", "critic", "report", "generate")
# (name, arguments, the offending path): the config file's and the run directory's cases
CONFIG_CASES = (
    ("missing config", ["{base}/missing.toml"], "{base}/missing.toml"),
    ("folder as config", ["{base}/folder"], "{base}/folder"),
    ("empty config", ["{base}/empty.toml"], "{base}/empty.toml"),
)
RUN_DIR_CASES = (
    ("file as run dir", ["{base}/config.toml", "--run-dir", "{base}/a_file"], "{base}/a_file"),
    ("unwritable run dir", ["{base}/config.toml", "--run-dir", UNWRITABLE], UNWRITABLE),
)
COMMANDS = [("-m", "zirelia_local", stage) for stage in STAGES] + [("-m", "zirelia_local.train")]
DOCTOR = ("-m", "zirelia_local", "doctor")


def _cases() -> list:
    cases = []
    for command in [*COMMANDS, DOCTOR]:
        for name, args, path in CONFIG_CASES + (RUN_DIR_CASES if command != DOCTOR else ()):
            cases.append(pytest.param([*command, *args], [path], 2, id=f"{' '.join(command[1:])}: {name}"))
    curate = ["-m", "zirelia_local", "curate", "{base}/config.toml", "--run-dir", "{base}/run-images"]
    kohya = ["{base}/kohya.toml", "--run-dir", "{base}/run-kohya"]
    cases += [
        pytest.param(
            ["-m", "zirelia_local", "dataset", "{base}/config.toml", "--run-dir", "{base}/a_file/run"],
            ["{base}/a_file/run", "{base}/a_file is a file"],
            2,
            id="dataset: run dir under a file",
        ),
        pytest.param([*curate, "--images", "{base}/a_file"], ["{base}/a_file"], 2, id="curate: file as --images"),
        pytest.param([*curate, "--images", "{base}/missing"], ["{base}/missing"], 2, id="curate: missing --images"),
        pytest.param(
            [*curate, "--images", "{base}/huge"],
            ["{base}/huge/huge.png: too large: 400 MP, limit 179 MP"],
            1,
            id="curate: huge image",
        ),
        pytest.param([*curate, "--images", "{base}/empty"], ["{base}/empty/empty.png"], 1, id="curate: empty image"),
        pytest.param(
            ["-m", "zirelia_local", "run", "{base}/reference.toml", "--run-dir", "{base}/run-reference"],
            ["{base}/huge/huge.png: too large: 400 MP, limit 179 MP"],
            1,
            id="run: huge reference image",
        ),
        pytest.param(
            ["-m", "zirelia_local", "train", *kohya, "--dry-run"], ["{base}/a_file"], 0, id="train: file as sd_scripts"
        ),
        # doctor reads the whole machine (a few seconds): one run for the run directory and sd-scripts
        pytest.param(
            [*DOCTOR, "{base}/kohya.toml", "--run-dir", UNWRITABLE],
            [f"cannot use {UNWRITABLE} as the run directory", "{base}/a_file is a file, not a folder"],
            1,
            id="doctor: unwritable run dir, file as sd_scripts",
        ),
        *(
            pytest.param(
                ["-m", "zirelia_local", stage, "{base}/zirelia.toml", *extra, "--num-processes", value],
                ["--num-processes", message],
                2,
                id=f"{stage}: --num-processes {value}",
            )
            for stage, extra, value, message in (
                ("run", [], "0", "must be at least 1"),
                ("train", ["--dry-run"], "-1", "must be at least 1"),
                ("generate", ["--prompt", "x"], "two", "'two' is not a whole number"),
            )
        ),
        pytest.param(
            ["-m", "zirelia_local", "config-reference", "{base}/a_file"],
            ["{base}/a_file"],
            2,
            id="config-reference: stray argument",
        ),
    ]
    return cases


@pytest.fixture(scope="module")
def base():
    folder = Path(tempfile.mkdtemp(prefix="zh", dir="/tmp"))
    try:
        write_config(folder)
        write_config(folder, name="reference.toml", extra=f"[curate]\nreference_images = ['{folder}/huge/huge.png']\n")
        write_config(folder, name="kohya.toml", extra=f"[train]\nbackend = 'kohya'\nsd_scripts = '{folder}/a_file'\n")
        (folder / "folder").mkdir()
        (folder / "empty.toml").write_bytes(b"")
        (folder / "a_file").write_text("not a folder\n")
        (folder / "huge").mkdir()
        huge_png(folder / "huge" / "huge.png")
        (folder / "empty").mkdir()
        (folder / "empty" / "empty.png").write_bytes(b"")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/1 as a place no one can write")
@pytest.mark.parametrize(("argv", "expected", "code"), _cases())
def test_hostile_argument(base, argv, expected, code):
    argv = [arg.format(base=base) for arg in argv]
    result = run_cli(argv, env={"COLUMNS": "400"}, timeout=120)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == code, output[-3000:]
    for text in expected:
        assert text.format(base=base) in output, output[-3000:]
