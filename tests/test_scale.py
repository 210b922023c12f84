"""Scaling out on accelerate (docs/scaling.md): two real CPU processes (gloo) on the tiny model leave the run
directory one process leaves; a launch killed mid-dataset resumes; many personas in one command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_no_temp_files, run_cli

DEMO = (REPO / "configs" / "demo.toml").read_text()


def small_config(tmp_path: Path, name: str, *, count: int = 4, trigger: str = "siennafox23") -> Path:
    """The demo persona, smaller: one image per batch, so both the dataset and the critic are split."""
    text = (
        DEMO.replace("count = 8", f"count = {count}")
        .replace("batch_size = 4", "batch_size = 1")
        .replace("epochs = 2", "epochs = 1")
        .replace("max_retries = 1", "max_retries = 0")
        .replace('trigger_word = "siennafox23"', f'trigger_word = "{trigger}"')
        .replace('dir = "runs/demo"', f'dir = "{tmp_path / name}"')
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def launch(args: list[str], processes: int = 2) -> list[str]:
    return [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--multi_gpu",  # torchrun; ACCELERATE_USE_CPU (LAUNCH_ENV) makes them CPU processes on gloo
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        *args,
    ]


LAUNCH_ENV = {"ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "250"}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


ONE_PROCESS = """
from accelerate.state import PartialState
from zirelia_local.common import processes
assert not processes.is_distributed()
assert processes.share_of([1, 2, 3], unit=2) == [1, 2, 3]
assert processes.gather_json({"a": 1}) == [{"a": 1}]
assert processes.broadcast_json([1]) == [1]
processes.wait_for_everyone()
assert processes.is_main_process() and processes.process_index() == 0
assert PartialState._shared_state == {}, PartialState._shared_state
print("no-op")
"""


def test_one_process_is_a_no_op_without_accelerate_state():
    # In a fresh interpreter: a single process must not initialise accelerate's state.
    result = run_cli(["-c", ONE_PROCESS], env={"WORLD_SIZE": "1"})
    assert result.returncode == 0 and "no-op" in result.stdout, result.stderr[-2000:]


def test_a_child_of_the_launch_gets_no_ranks_and_the_shortcut_launches_on_the_cpu(tmp_path):
    from zirelia_local.common.processes import single_process_env
    from zirelia_local.scale import launch_argv

    env = single_process_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1", "ACCELERATE_USE_CPU": "1", "X": "y"})
    assert env == {"X": "y"}
    argv = launch_argv(tmp_path / "a.toml", 2, cpu=True)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in argv
    assert argv[argv.index("--num_processes") + 1] == "2" and argv[-2:] == [
        "zirelia_local.train",
        str(tmp_path / "a.toml"),
    ]
    assert "--cpu" in launch_argv(tmp_path / "a.toml", 1, cpu=True)
    generate = launch_argv(tmp_path / "a.toml", 2, cpu=True, extra=["--prompt", "x"], command="generate")
    assert generate[-5:] == ["zirelia_local", "generate", str(tmp_path / "a.toml"), "--prompt", "x"]


def test_each_process_of_a_generate_launch_gets_the_command_line_it_was_given(tmp_path):
    from zirelia_local.cli import _generate_flags, build_parser

    parser = build_parser()
    given = ["generate", "a.toml", "--prompt", "a cafe", "--prompt=--a dash", "--prompts", "p.txt", "--count", "3"]
    given += ["--seed", "0", "--scale", "0.8", "--out", str(tmp_path), "--max-retries", "0", "--keep-rejected"]
    given += ["--run-dir", "r", "--skip-checks", "-v", "--num-processes", "4", "--lora", "l.safetensors"]
    args = parser.parse_args(given)
    again = parser.parse_args(["generate", "a.toml", *_generate_flags(args)])
    assert vars(again) | {"num_processes": 4, "action": None} == vars(args) | {"action": None}
    assert again.prompt == ["a cafe", "--a dash"] and again.num_processes == 1  # each process is one process


def test_several_configs_take_no_single_run_dir(tmp_path):
    result = run_cli(["-m", "zirelia_local", "run", "a.toml", "b.toml", "--run-dir", str(tmp_path)])
    assert result.returncode == 2 and "--run-dir names one run directory" in result.stderr


@pytest.mark.slow
def test_two_processes_leave_the_run_directory_one_process_leaves(tmp_path):
    one = small_config(tmp_path, "one")
    two = small_config(tmp_path, "two")
    single = run_cli(["-m", "zirelia_local.train", str(one)], env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = run_cli(launch(["-m", "zirelia_local.train", str(two)]), env=LAUNCH_ENV, timeout=900)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert launched.stderr.count("training once for the launch") == 1
    # Each step's heading and the closing line are said once, not by every process.
    assert launched.stderr.count("1/5 dataset") == 1 and launched.stderr.count("done. report") == 1
    # The launch's pre-flight covered training: its child neither says nor records a skip.
    assert "skipped" not in launched.stdout + launched.stderr
    preflight = json.loads((tmp_path / "two" / "preflight.json").read_text())["stages"]
    assert set(preflight) == {"dataset", "curate", "train", "critic", "report"}
    assert all(entry["status"].startswith("passed") for entry in preflight.values()), preflight
    assert preflight["train"]["command"] == "python -m zirelia_local.train"

    first, second = tmp_path / "one", tmp_path / "two"
    # Same images byte for byte (4 drawn, 2 per process), the same manifest rows in plan order, captions.
    assert files_of(first / "images") == files_of(second / "images") and len(files_of(first / "images")) == 4
    assert (first / "manifest.jsonl").read_bytes() == (second / "manifest.jsonl").read_bytes()
    assert files_of(first / "train_data") == files_of(second / "train_data")
    # The critic drew the same images (1 per process) and judged them the same, in the same order.
    assert files_of(first / "critic").keys() == files_of(second / "critic").keys()
    for name in ("epoch_000001/p00_s1001_a0.png", "epoch_000001/p01_s1001_a0.png"):
        assert (first / "critic" / name).read_bytes() == (second / "critic" / name).read_bytes()
    scores = [[json.loads(line) for line in (run / "critic" / "scores.jsonl").open()] for run in (first, second)]
    assert len(scores[0]) == 2 and scores[0] == scores[1]
    # No shard, lock holder or temp file left beyond what one process leaves.
    top = {path.name for path in first.iterdir()}
    assert top == {path.name for path in second.iterdir()} and "shards" not in top
    assert_no_temp_files(second)


def _rank_pid(launcher: int, rank: str) -> int | None:
    """The pid of the launch's worker of this rank (a descendant of the launcher with RANK=<rank>)."""
    children = {launcher}
    found = True
    while found:
        found = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in children:
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent in children:
                children.add(int(entry.name))
                found = True
    for pid in children - {launcher}:
        try:
            if f"RANK={rank}".encode() in (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return pid
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_process_killed_mid_dataset_then_a_rerun_completes_without_drawing_twice(tmp_path):
    config = small_config(tmp_path, "killed", count=8)
    run_dir = tmp_path / "killed"
    env = {**os.environ, **LAUNCH_ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    process = subprocess.Popen(
        [sys.executable, *launch(["-m", "zirelia_local", "dataset", str(config)])],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard = run_dir / "shards" / "manifest-1.jsonl"
    deadline = time.monotonic() + 600
    while not (shard.is_file() and shard.read_text().strip()) and process.poll() is None:
        assert time.monotonic() < deadline, "rank 1 drew nothing in 10 minutes"
        time.sleep(0.05)
    victim = _rank_pid(process.pid, "1")
    assert victim is not None and process.poll() is None, "the launch ended before rank 1 could be killed"
    os.kill(victim, signal.SIGKILL)
    assert process.wait(timeout=120) != 0
    drawn_before = {row["id"]: row["sha256"] for row in map(json.loads, shard.read_text().splitlines())}
    assert drawn_before
    stamps = {image_id: (run_dir / "images" / f"{image_id}.png").stat().st_mtime_ns for image_id in drawn_before}

    rerun = run_cli(["-m", "zirelia_local", "dataset", str(config)], timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "drawn by an interrupted launch kept" in rerun.stderr
    rows = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({row["id"] for row in rows}) == 8  # complete, no duplicate row
    assert [row["index"] for row in rows] == list(range(8)) and all(row["status"] == "generated" for row in rows)
    by_id = {row["id"]: row for row in rows}
    for image_id, sha in drawn_before.items():  # what rank 1 drew before it died was kept, not drawn again
        assert by_id[image_id]["sha256"] == sha
        assert (run_dir / "images" / f"{image_id}.png").stat().st_mtime_ns == stamps[image_id]
    assert not (run_dir / "shards").exists()
    assert_no_temp_files(run_dir)


@pytest.mark.slow
def test_many_personas_run_in_turn_and_a_broken_one_does_not_stop_the_others(tmp_path):
    first = small_config(tmp_path, "first", count=2)
    second = small_config(tmp_path, "second", count=2, trigger="miraveld31")
    broken = tmp_path / "broken.toml"
    broken.write_text("[persona]\nname = 'Broken'\n[dataset]\ncount = 'many'\n")
    result = run_cli(
        ["-m", "zirelia_local", "run", str(first), str(broken), str(second)],
        env={"COLUMNS": "250", "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # one persona failed
    table = result.stdout + result.stderr
    lines = {
        name: next(line for line in table.splitlines() if f"({name}.toml)" in line)
        for name in ("first", "broken", "second")
    }
    assert "│ 0 " in lines["first"] and "│ 0 " in lines["second"] and "│ 2 " in lines["broken"]
    for name in ("first", "second"):
        report = tmp_path / name / "report" / "index.html"
        assert report.is_file() and str(report) in lines[name]
        assert "│ 1 " in lines[name]  # the best epoch (the only one)


ANNOUNCE = """
from zirelia_local.common.console import announce, announced
announce("k", "SAID-ONCE-A-MACHINE")
assert announced("k")  # remembered on every process, so no later stage repeats it
"""


@pytest.mark.parametrize(("local_rank", "said"), [("0", True), ("1", False)])
def test_up_front_warnings_are_said_by_one_process_a_machine(local_rank, said):
    # The launcher's environment of a process of a 4-process launch on 2 machines (no state is created).
    env = {"WORLD_SIZE": "4", "RANK": str(2 + int(local_rank)), "LOCAL_RANK": local_rank, "COLUMNS": "200"}
    result = run_cli(["-c", ANNOUNCE], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("SAID-ONCE-A-MACHINE" in result.stderr) is said
