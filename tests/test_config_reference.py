"""docs/config.md is generated from the pydantic models and must match them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from tests.conftest import REPO, run_cli
from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.config_reference import REGENERATE_COMMAND, config_reference_markdown, type_description


def test_docs_config_md_is_up_to_date() -> None:
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_reference_markdown(), (
        f"docs/config.md is stale: the config models changed. Regenerate it with `{REGENERATE_COMMAND}`"
    )


def test_every_key_of_every_section_is_documented() -> None:
    page = config_reference_markdown()
    for section, field in ZireliaConfig.model_fields.items():
        assert f"## [{section}]" in page
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"| `{key}` |" in page, f"{section}.{key} missing"
    assert "| `trigger_word` | string | **required** |" in page
    assert '| `backend` | one of `kohya`, `diffusers` | `"kohya"` |' in page
    assert "| `epochs` | integer (≥ 1, ≤ 1000) | `20` |" in page


def test_type_descriptions() -> None:
    assert type_description(Literal["a", "b"]) == "one of `a`, `b`"
    assert type_description(int | None, [Field(ge=1)]) == "integer (≥ 1), optional"
    assert type_description(list[Annotated[str, Field(min_length=1)]], [Field(min_length=2)]) == (
        "list of string (non-empty); at least 2 items"
    )
    assert type_description(Path | None) == "path, optional"
    assert type_description(Literal["all", "last"] | list[int]) == "one of `all`, `last` or list of integer"


def test_cli_prints_the_same_reference() -> None:
    result = run_cli(["-m", "zirelia_local.cli", "config-reference"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == config_reference_markdown()
