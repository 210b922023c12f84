"""Paths a user hands us, checked where they enter: the run directory, the config file, `--images`, reference
photos, model files and the sd-scripts folder; and file names with a newline or bytes that are not UTF-8,
through the import, the JSON records and the HTML report. Every refusal names the path and what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, write_config
from tests.hostile import ODD_NAME, huge_png, lying_png, truncated_png
from tests.photos import photo
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ConfigError, UsageError, ZireliaError
from zirelia_local.common.files import json_text, read_jsonl, write_jsonl
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.common.rundir import ensure_run_dir, prepare_run_dir, run_dir_write_problem, run_lock
from zirelia_local.curate import check_reference_images, run_curate

TOO_LARGE = "too large: 400 MP, limit 179 MP"
# /proc/<pid> is a folder in which no file can be created, not even by root (tests here run as root).
UNWRITABLE = Path("/proc/1")
needs_proc = pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="needs Linux /proc")


def usage_error(action) -> UsageError:
    with pytest.raises(UsageError) as caught:
        action()
    assert caught.value.exit_code == 2
    return caught.value


# --- the run directory ----------------------------------------------------------------------------------------


def test_a_file_is_not_a_run_directory(tmp_path):
    (tmp_path / "a_file").write_text("x")
    error = usage_error(lambda: ensure_run_dir(tmp_path / "a_file"))
    assert error.message == f"cannot use {tmp_path / 'a_file'} as the run directory: is a file, not a folder"
    assert "--run-dir" in error.hint
    error = usage_error(lambda: run_lock(tmp_path / "a_file" / "run").__enter__())
    assert f"cannot be created: {tmp_path / 'a_file'} is a file, not a folder" in error.message
    assert (tmp_path / "a_file").read_text() == "x"


@needs_proc
def test_a_place_no_one_can_write_is_not_a_run_directory():
    error = usage_error(lambda: run_lock(UNWRITABLE).__enter__())
    assert error.message == (
        f"cannot use {UNWRITABLE} as the run directory: cannot write its lock file .lock: no file can be created there"
    )
    assert run_dir_write_problem(UNWRITABLE) == f"cannot write in {UNWRITABLE}: no file can be created there"


def test_a_folder_where_the_run_directory_keeps_a_file(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    error = usage_error(lambda: run_lock(tmp_path / "run").__enter__())
    assert "its lock file .lock is a folder; remove that folder" in error.message
    config = load_config(write_config(tmp_path))
    (config.run_dir / "config.toml").mkdir()
    error = usage_error(lambda: prepare_run_dir(config))
    assert f"cannot use {config.run_dir} as the run directory: config.toml in it is a folder" in error.message


def test_run_directory_names_with_a_newline_work_and_undecodable_ones_are_refused(tmp_path):
    newline = tmp_path / "my\nrun"
    with run_lock(newline):
        assert (newline / ".lock").is_file()
    config = load_config(write_config(tmp_path), run_dir=newline)
    assert (prepare_run_dir(config) / "config.toml").is_file()
    undecodable = tmp_path / os.fsdecode(b"run\xff")
    error = usage_error(lambda: ensure_run_dir(undecodable))
    assert "run\\xff" in error.message and "not valid UTF-8" in error.message
    assert not os.path.exists(os.fsencode(tmp_path) + b"/run\xff")


def test_doctor_names_a_run_directory_that_cannot_be_used(tmp_path):
    from zirelia_local.doctor.resources import disk_checks, run_dir_check

    (tmp_path / "a_file").write_text("x")
    config = load_config(write_config(tmp_path), run_dir=tmp_path / "a_file")
    row = run_dir_check(config.run_dir)
    assert not [check for check in disk_checks(config, generator_cached=True) if check.name == "disk (run dir)"]
    assert row.failed and f"cannot use {tmp_path / 'a_file'} as the run directory: is a file" in row.detail
    assert run_dir_write_problem(tmp_path / "new" / "run") is None
    assert not (tmp_path / "new").exists()  # the check creates nothing


READ_ONLY_SCRIPT = textwrap.dedent(
    """
    set -e
    mount -t tmpfs -o size=1m tmpfs "$1"
    mkdir "$1/existing"
    mount -o remount,ro "$1"
    exec "$2" -c '
    import sys
    from pathlib import Path
    from zirelia_local.cli import run_guarded
    from zirelia_local.common.rundir import run_lock
    def lock(path):
        with run_lock(Path(path)):
            return 0
    sys.exit(run_guarded(lambda: lock(sys.argv[1])))' "$3"
    """
)


@pytest.mark.parametrize(
    ("where", "reason"),
    [("new/run", "cannot create it ({mount}/new)"), ("existing", "cannot write its lock file .lock")],
)
def test_a_run_directory_on_a_read_only_file_system(tmp_path, where, reason):
    """A real read-only mount (tmpfs, remounted ro) in a private mount namespace of the child process alone,
    so nothing is left mounted; skipped where the kernel or container allows no such namespace."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rm", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no unshare -rm here (user and mount namespaces): cannot mount a read-only file system")
    mount = tmp_path / "ro"
    mount.mkdir()
    result = subprocess.run(
        [unshare, "-rm", "sh", "-c", READ_ONLY_SCRIPT, "sh", str(mount), sys.executable, str(mount / where)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    reason = reason.format(mount=mount)
    assert f"cannot use {mount / where} as the run directory: {reason}: read-only file system" in result.stderr


# --- the config file ------------------------------------------------------------------------------------------


def config_error(path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 2
    return caught.value


def test_a_folder_given_as_the_config_points_at_the_toml_files_in_it(tmp_path):
    error = config_error(tmp_path)
    assert error.message == f"config file {tmp_path} is a folder, not a file"
    write_config(tmp_path, name="sienna.toml")
    assert f"{tmp_path / 'sienna.toml'}" in config_error(tmp_path).hint


def test_a_device_or_an_unreadable_file_as_the_config(tmp_path):
    assert "larger than 1 MiB: not a zirelia config" in config_error("/dev/zero").message
    unreadable = Path("/proc/1/mem")  # no process may read another's memory this way, root included
    try:
        unreadable.open("rb").close()
    except OSError:
        error = config_error(unreadable)
        assert error.message.startswith(f"cannot read config file {unreadable}: ") and "ls -l" in error.hint
    else:
        pytest.skip("/proc/1/mem is readable here")


def test_a_config_with_an_odd_name_is_named_escaped(tmp_path):
    path = tmp_path / ODD_NAME.replace(".png", ".toml")
    path.write_text("")
    error = config_error(path)
    assert display_path(path) in error.message and "odd\\xff\\nname" in error.message
    error.message.encode("utf-8")


# --- --images and reference photos ----------------------------------------------------------------------------


def test_images_must_be_a_folder(tmp_path):
    config = load_config(write_config(tmp_path))
    (tmp_path / "photo.jpg").write_bytes(b"x")
    error = usage_error(lambda: run_curate(config, images_dir=tmp_path / "photo.jpg"))
    assert error.message == f"--images {tmp_path / 'photo.jpg'} is a file, not a folder"
    assert "a folder of its own" in error.hint
    error = usage_error(lambda: run_curate(config, images_dir=tmp_path / "nowhere"))
    assert error.message == f"--images {tmp_path / 'nowhere'} does not exist"


def test_reference_photos_are_checked_before_anything_runs(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    huge = huge_png(tmp_path / "huge.png")
    paths = [tmp_path / "missing.jpg", tmp_path / "folder.jpg", huge, Path("/dev/null")]
    with pytest.raises(ZireliaError) as caught:
        check_reference_images(paths)
    assert caught.value.message == (
        f"[curate] reference_images: {paths[0]}: does not exist; {paths[1]}: is a folder, not a file; "
        f"{huge}: {TOO_LARGE}; /dev/null: is not a regular file (a device, pipe or socket)"
    )
    # The whole job checks them before the dataset stage draws anything.
    from zirelia_local.pipeline import run_pipeline

    config = load_config(write_config(tmp_path, extra=f"[curate]\nreference_images = ['{huge}']\n"))
    with pytest.raises(ZireliaError, match="reference_images"):
        run_pipeline(config)
    assert not (config.run_dir / "images").exists()


def test_a_truncated_reference_photo_is_named_with_its_key(tmp_path):
    from zirelia_local.curate.verdicts import reference_identity
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    cut = truncated_png(tmp_path / "cut.png")  # its header is fine: only decoding finds the damage
    config = load_config(write_config(tmp_path))
    with pytest.raises(ZireliaError) as caught:
        reference_identity(DlibEmbedder(), [cut], config.curate, 0.6)
    assert caught.value.message.startswith(f"[curate] reference_images: {cut}: truncated")


@pytest.mark.slow
def test_curating_a_folder_of_hostile_files_gives_each_a_verdict_and_a_report(tmp_path):
    """Huge, truncated, lying, empty and oddly named files beside real photos: each gets a verdict with its
    reason; the JSON records, the contact sheet and the HTML report are all written."""
    from zirelia_local.curate.outputs import CONTACT_SHEET, CURATION_LOG
    from zirelia_local.faces.dlib_embedder import DlibEmbedder
    from zirelia_local.report import write_report

    folder = tmp_path / "photos"
    folder.mkdir()
    huge_png(folder / "huge.png")
    truncated_png(folder / "cut.png")
    lying_png(folder / "lying.png", 300, 300)
    (folder / "empty.png").write_bytes(b"")
    photo("obama").save(folder / ODD_NAME, format="PNG")
    photo("obama2").save(folder / "obama2.jpg")
    config = load_config(write_config(tmp_path, extra="[curate]\nmode = 'record'\n"))
    result = run_curate(config, images_dir=folder, embedder=DlibEmbedder())

    log = {Path(line["source"]).name: line for line in read_jsonl(config.run_dir / CURATION_LOG)}
    assert sorted(log) == sorted(os.listdir(folder))  # the odd name comes back byte for byte
    assert log["huge.png"]["reason"] == "unreadable" and log["huge.png"]["detail"] == TOO_LARGE
    assert log["empty.png"]["detail"].startswith("not an image")
    assert log["cut.png"]["detail"].startswith("truncated")  # imported (its header is fine), refused by the scan
    assert log["lying.png"]["reason"] == "no_face"  # Pillow fills the missing rows; no face in black
    assert log[ODD_NAME]["reason"] == "ok" and log["obama2.jpg"]["reason"] == "ok"
    assert len(result.kept) == 3 and (config.run_dir / CONTACT_SHEET).is_file()
    for name in ("curation.jsonl", "manifest.jsonl", "curation.json"):
        (config.run_dir / name).read_bytes().decode("utf-8")  # valid UTF-8 text, whatever the names

    page = write_report(config).read_text(encoding="utf-8")
    assert f"unreadable: {TOO_LARGE}" in page
    assert "odd\\xff\\nname\\x1b[31m.png" not in page  # imported: the report lists its copy, input/...
    assert display_path(folder / "empty.png") in page


def test_json_records_keep_undecodable_names_exactly(tmp_path):
    name = os.fsdecode(b"/photos/caf\xe9\n.jpg")  # a Latin-1 name, as old cameras and zips leave them
    write_jsonl(tmp_path / "log.jsonl", [{"source": name}, {"source": "/photos/café.jpg"}])
    text = (tmp_path / "log.jsonl").read_text(encoding="utf-8")
    assert "café" in text  # readable where it can be
    assert [record["source"] for record in read_jsonl(tmp_path / "log.jsonl")] == [name, "/photos/café.jpg"]
    assert os.fsencode(json.loads(json_text({"p": name}))["p"]) == b"/photos/caf\xe9\n.jpg"


def test_a_file_as_the_model_cache_is_named(tmp_path):
    from zirelia_local.dataset.tiny_flux import ensure_tiny_flux

    (tmp_path / "cache").write_text("x")
    with pytest.raises(ZireliaError) as caught:
        ensure_tiny_flux(tmp_path / "cache")
    assert caught.value.message.endswith(f"in the cache folder {tmp_path / 'cache'}: is a file, not a folder")
    assert "ZIRELIA_CACHE" in caught.value.hint


# --- model files and the sd-scripts folder --------------------------------------------------------------------


def test_sd_scripts_python_and_model_paths_of_the_wrong_kind_are_named(tmp_path, monkeypatch):
    from zirelia_local.doctor.kohya import kohya_model_file_checks, sd_scripts_folder_check, sd_scripts_python_check
    from zirelia_local.training.kohya_env import model_file_problems, sd_scripts_problem

    monkeypatch.delenv("ZIRELIA_SD_SCRIPTS", raising=False)
    (tmp_path / "sd-scripts.zip").write_bytes(b"PK")
    (tmp_path / "clip_l.safetensors").mkdir()
    file, folder = tmp_path / "sd-scripts.zip", tmp_path / "clip_l.safetensors"
    assert sd_scripts_problem(file, "flux") == f"the sd-scripts folder {file} is a file, not a folder"
    assert sd_scripts_folder_check(file).detail == f"{file} is a file, not a folder"
    assert sd_scripts_python_check(tmp_path, folder).detail == f"{folder} is a folder, not a file"
    config = load_config(write_config(tmp_path, extra=f"[train]\nbackend = 'kohya'\nclip_l = '{folder}'\n"))
    assert f"[train] clip_l = '{folder}': {folder} is a folder, not a file" in "\n".join(model_file_problems(config))
    (row,) = [check for check in kohya_model_file_checks(config) if check.name == "train.clip_l"]
    assert row.failed and row.detail == f"{folder} is a folder, not a file"
    assert path_problem(tmp_path / "clip_l.safetensors" / "x", "file") == "does not exist"
