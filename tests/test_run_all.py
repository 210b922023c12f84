"""benchmarks/run_all.py: runs every bench_*.py, collects the BENCH lines, writes one page.

The benchmark scripts here are small real scripts written into a temporary folder (the project's own
benchmarks take minutes); the runner under test is the real one, run as a user runs it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO, run_cli

# benchmarks/ is scripts, not a package: load run_all.py by path (registered first, for its dataclasses).
_spec = importlib.util.spec_from_file_location("benchmarks_run_all", REPO / "benchmarks" / "run_all.py")
assert _spec is not None and _spec.loader is not None
run_all = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = run_all
_spec.loader.exec_module(run_all)


def write_bench(folder: Path, topic: str, body: str) -> Path:
    path = folder / f"bench_{topic}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_run_all_writes_one_table_with_machine_commands_and_gpu_figures(tmp_path: Path) -> None:
    benches = tmp_path / "benches"
    benches.mkdir()
    write_bench(
        benches,
        "alpha",
        """
        import json
        print("alpha: 12.5 images/s")
        for metric, value in (("images/s", 12.5), ("peak MB", 300)):
            print("BENCH " + json.dumps({"benchmark": "alpha", "metric": metric, "value": value, "params": "batch 2"}))
        """,
    )
    write_bench(benches, "broken", "import sys\nprint('starting')\nsys.exit(3)\n")
    write_bench(benches, "slow", "import time\ntime.sleep(30)\n")
    write_bench(benches, "garbled", "print('BENCH {not json')\nprint('BENCH ' + '{\"benchmark\": \"g\"}')\n")
    (benches / "helper.py").write_text("raise SystemExit('not a benchmark: never run')\n")
    gpu = tmp_path / "gpu_results.json"
    gpu.write_text(
        json.dumps(
            {
                "results": [
                    {
                        "benchmark": "alpha",
                        "metric": "images/s",
                        "value": 410.0,
                        "params": "batch 2",
                        "command": "python benchmarks/bench_alpha.py",
                        "device": "NVIDIA H100 80GB HBM3 (79 GiB)",
                        "date": "2026-11-01",
                    }
                ]
            }
        )
    )
    out = tmp_path / "docs" / "benchmarks.md"
    args = ["benchmarks/run_all.py", "--bench-dir", str(benches), "--out", str(out), "--gpu-results", str(gpu)]
    result = run_cli([*args, "--timeout", "3"], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # one failed, one timed out
    page = out.read_text()
    assert "## Machine" in page and "| cores |" in page and "| GPU |" in page and "torch" in page
    command = f"`python {benches / 'bench_alpha.py'}`"
    assert f"| alpha | images/s | 12.5 | batch 2 | {command} |" in page
    assert f"| alpha | peak MB | 300 | batch 2 | {command} |" in page
    assert "| broken | failed (exit 3) |" in page
    assert "| slow | timed out |" in page
    assert "unreadable BENCH line" in page and "BENCH line without metric, value" in page
    assert "helper" not in page
    assert "| alpha | images/s | 410 | batch 2 | NVIDIA H100 80GB HBM3 (79 GiB) | 2026-11-01 |" in page
    assert "No GPU figures" not in page


def test_no_gpu_results_says_so(tmp_path: Path) -> None:
    run = run_all.BenchRun(script=tmp_path / "bench_x.py", command="python bench_x.py", returncode=0)
    run.figures = [{"benchmark": "x", "metric": "s", "value": 1.23456, "params": "p"}]
    page = run_all.render_markdown([run], {"CPU": "test", "GPU": "none"}, [])
    assert "No GPU figures have been measured yet" in page
    assert "| x | s | 1.235 | p | `python bench_x.py` |" in page
    assert "## Figures on this machine (CPU)" in page


def test_record_gpu_results_replaces_same_figure_of_same_device(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    run = run_all.BenchRun(script=tmp_path / "bench_x.py", command="python bench_x.py", returncode=0)
    run.figures = [{"benchmark": "x", "metric": "images/s", "value": 1.0, "params": "b1"}]
    assert run_all.record_gpu_results(path, [run], "H100", "d1") == 1
    run.figures[0]["value"] = 2.0
    run_all.record_gpu_results(path, [run], "H100", "d2")
    run_all.record_gpu_results(path, [run], "A100", "d3")
    results = run_all.load_gpu_results(path)
    assert [(item["device"], item["value"], item["command"]) for item in results] == [
        ("H100", 2.0, "python bench_x.py"),
        ("A100", 2.0, "python bench_x.py"),
    ]


def test_discover_only_filters_topics(tmp_path: Path) -> None:
    for topic in ("a", "b"):
        write_bench(tmp_path, topic, "")
    assert [path.name for path in run_all.discover(tmp_path)] == ["bench_a.py", "bench_b.py"]
    assert [path.name for path in run_all.discover(tmp_path, ["b"])] == ["bench_b.py"]
    assert [path.name for path in run_all.discover(tmp_path, ["bench_a.py"])] == ["bench_a.py"]


def test_repository_gpu_results_file_is_valid() -> None:
    results = run_all.load_gpu_results(REPO / "benchmarks" / "gpu_results.json")
    for item in results:
        assert {"benchmark", "metric", "value", "command", "device"} <= item.keys()
