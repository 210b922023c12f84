"""Crash-safe file helpers: hard links placed twice, temp files swept under the run lock."""

from __future__ import annotations

import os

from zirelia_local.common.files import link_or_copy, remove_stale_temp_files
from zirelia_local.common.rundir import run_lock


def test_link_placed_again_over_itself_leaves_no_temp_file(tmp_path):
    source = tmp_path / "epoch.safetensors"
    source.write_bytes(b"lora")
    target = tmp_path / "run" / "best.safetensors"
    link_or_copy(source, target)
    link_or_copy(source, target)  # rename of a link over a link to the same file is a no-op in POSIX
    assert os.path.samefile(source, target)
    assert sorted(path.name for path in target.parent.iterdir()) == ["best.safetensors"]


def test_link_replaces_a_different_file_atomically(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    target = tmp_path / "out" / "best.safetensors"
    link_or_copy(old, target)
    link_or_copy(new, target)
    assert target.read_bytes() == b"new" and os.path.samefile(new, target)
    assert old.read_bytes() == b"old"  # the former link's file is untouched
    assert sorted(path.name for path in target.parent.iterdir()) == ["best.safetensors"]


def test_a_stale_temp_link_from_a_killed_run_does_not_block_the_next(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(b"x")
    target = tmp_path / "target"
    stale = tmp_path / ".target.link.tmp"
    stale.write_bytes(b"half")
    link_or_copy(source, target)
    assert not stale.exists() and target.read_bytes() == b"x"


def test_the_run_lock_sweeps_what_killed_writers_left(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    (run_dir / "images" / ".img_00001.png.a1b2c3.tmp").write_bytes(b"half an image")
    staging = run_dir / "train" / ".state-000002.tmp"
    staging.mkdir(parents=True)
    (staging / "lora.safetensors").write_bytes(b"half a state")
    kept = run_dir / "images" / "img_00000.png"
    kept.write_bytes(b"png")
    with run_lock(run_dir):
        leftovers = sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*.tmp"))
    assert leftovers == []
    assert kept.read_bytes() == b"png"


def test_sweep_is_flat_unless_asked(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".a.tmp").write_bytes(b"")
    (tmp_path / "sub" / ".b.tmp").write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == 1
    assert (tmp_path / "sub" / ".b.tmp").exists()
    assert remove_stale_temp_files(tmp_path, recursive=True) == 1
