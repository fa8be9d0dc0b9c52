"""The CLI starts without heavy imports and turns user errors into one line."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_no_heavy_modules():
    code = (
        "import sys, matmeta.cli\n"
        "names = ('torch', 'torch_geometric', 'pymatgen', 'ase', 'scipy', 'matplotlib')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_help_lists_every_app():
    result = subprocess.run([sys.executable, "-m", "matmeta.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("data", "predict", "finetune", "generate", "jmak", "explain", "meta-train", "bench"):
        assert command in result.stdout


def test_bad_recipe_is_one_line_error(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[bench]\nname = 'nope'\n")
    result = subprocess.run([sys.executable, "-m", "matmeta.cli", "bench", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "name must be one of" in result.stderr
    assert "Traceback" not in result.stderr
