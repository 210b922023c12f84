"""The package's layout as docs/architecture.md describes it: stages in pipeline order, each importing only
the ground floor and earlier stages (their public names), the ground floor importing no stage, and no module
far past ~400 lines. Read from the source with `ast`, so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zirelia_local"

# Floors, bottom up. A module may import its own floor and the floors below it, never one above.
FLOORS: dict[str, int] = {
    "common": 0,  # config, files, manifest, rundir, security, images, console, errors
    "faces": 1,  # face detection and embeddings: a library the stages share
    "dataset": 2,
    "curate": 3,
    "training": 4,
    "critic": 5,
    "report": 6,
    "generate": 7,
    # the top: commands that run stages
    "doctor": 9,
    "pipeline": 9,
    "scale": 9,  # training once per launch, the --num-processes shortcut, many personas
    "cli": 10,
    "train": 10,
    "__main__": 10,
    "__init__": 10,
}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _room(module: str) -> str:
    """'zirelia_local.curate.scan' -> 'curate'; 'zirelia_local.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every zirelia_local import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zirelia_local"):
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zirelia_local"):
                    found.append((alias.name, [], node.lineno))
    return found


def test_every_room_has_a_floor():
    rooms = {_room(_module_name(path)) for path in _modules()}
    assert rooms <= set(FLOORS), f"new top-level module or package without a floor: {rooms - set(FLOORS)}"


def test_no_module_imports_a_later_stage():
    wrong = []
    for path in _modules():
        name = _module_name(path)
        floor = FLOORS[_room(name)]
        for module, names, line in _imports(path):
            if module == "zirelia_local" and names == ["__version__"]:
                continue
            target = module if module != "zirelia_local" else f"zirelia_local.{names[0]}"
            if FLOORS[_room(target)] > floor:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not wrong, "imports from a later stage (or the top) into an earlier one:\n" + "\n".join(wrong)


def test_stages_use_each_other_only_through_public_names():
    private = []
    for path in _modules():
        room = _room(_module_name(path))
        for module, names, line in _imports(path):
            if _room(module) in (room, "__init__"):
                continue
            for imported in names:
                if imported.startswith("_"):
                    private.append(f"{path.relative_to(PACKAGE.parent)}:{line} takes {module}.{imported}")
    assert not private, "a stage reaches into another's internals:\n" + "\n".join(private)


def test_the_ground_floor_imports_no_stage():
    for path in (PACKAGE / "common").glob("*.py"):
        for module, _names, line in _imports(path):
            assert _room(module) == "common", f"{path.name}:{line} imports {module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_module_stays_under_the_size_limit(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it along its seams"


def test_each_stage_package_has_its_entry_point():
    entries = {
        "dataset": "run_dataset",
        "curate": "run_curate",
        "training": "run_training",
        "critic": "run_critic",
        "report": "write_report",
        "generate": "run_generate",
    }
    for package, function in entries.items():
        stage = PACKAGE / package / "stage.py"
        assert stage.is_file(), f"{package}/stage.py is missing"
        defined = {node.name for node in ast.parse(stage.read_text()).body if isinstance(node, ast.FunctionDef)}
        assert function in defined, f"{package}/stage.py does not define {function}"
