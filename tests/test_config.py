from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ConfigError


def test_shipped_configs_load():
    sienna = load_config(REPO / "configs" / "sienna.toml")
    assert sienna.persona.trigger_word == "siennafox23"
    assert sienna.dataset.count == 40
    assert sienna.generator.model == "black-forest-labs/FLUX.1-dev"
    assert sienna.train.network_dim == 32 and sienna.train.epochs == 20
    demo = load_config(REPO / "configs" / "demo.toml")
    assert demo.generator.model == "builtin:tiny-flux"
    assert demo.curate.mode == "record"


def test_default_run_dir_is_runs_trigger_word(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text().split("[run]")[0]
    path.write_text(text)
    assert load_config(path).run_dir == Path("runs/testpersona7")
    assert load_config(path, run_dir=tmp_path / "x").run_dir == tmp_path / "x"


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (("[dataset]", "[dataset]\ncolour = 3"), "dataset.colour", "unknown key"),
        (("count = 6", 'count = "six"'), "dataset.count", "integer"),
        (("count = 6", "count = 0"), "dataset.count", "greater than or equal to 1"),
        (('trigger_word = "testpersona7"', 'trigger_word = "test persona"'), "persona.trigger_word", "one token"),
        (('trigger_word = "testpersona7"', 'trigger_word = "../../etc"'), "persona.trigger_word", "one token"),
        (("resolution = 64", "resolution = 100"), "dataset.resolution", "multiple of 16"),
        (('device = "cpu"', 'device = "gpu"'), "generator.device", "cuda"),
        (('lighting = ["soft light", "hard light", "neon light"]', "lighting = []"), "dataset.lighting", "at least 1"),
        (('name = "Test Persona"\n', ""), "persona.name", "missing"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, edit, key, fragment):
    path = write_config(tmp_path)
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert key in message
    assert fragment in message


def test_fixed_seed_images_cannot_exceed_count(tmp_path):
    path = write_config(tmp_path, count=1)
    with pytest.raises(ConfigError, match="fixed_seed_images"):
        load_config(path)


def test_toml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[persona]\nname = = 'x'\n")
    with pytest.raises(ConfigError, match=r"broken.toml is not valid TOML.*line 2"):
        load_config(path)


def test_cli_config_error_exits_2_without_traceback(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("count = 6", "count = -3"))
    for command in (["-m", "zirelia_local.train", str(path)], ["-m", "zirelia_local", "dataset", str(path)]):
        result = run_cli(command)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "dataset.count" in result.stderr and str(path) in result.stderr.replace("\n", "")


def test_cli_missing_config_exits_2(tmp_path):
    result = run_cli(["-m", "zirelia_local.train", str(tmp_path / "nope.toml")])
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr
