from dataclasses import dataclass
from pathlib import Path

import pytest

from matmeta.errors import RecipeError
from matmeta.recipes import config_from_dict, config_to_dict, load_recipe


@dataclass(frozen=True)
class _Config:
    steps: int = 10
    lr: float = 0.1
    sizes: tuple[int, ...] = (5, 10)
    out: Path | None = None


def test_config_from_dict_coerces_and_round_trips():
    config = config_from_dict(_Config, {"lr": 1, "sizes": [5, 10, 20], "out": "x.ckpt"})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.sizes == (5, 10, 20)
    assert config.out == Path("x.ckpt")
    assert config_to_dict(config) == {"steps": 10, "lr": 1.0, "sizes": [5, 10, 20], "out": "x.ckpt"}


def test_unknown_key_is_named():
    with pytest.raises(RecipeError, match="unknown setting.*stpes"):
        config_from_dict(_Config, {"stpes": 3}, where="r.toml[train]")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
