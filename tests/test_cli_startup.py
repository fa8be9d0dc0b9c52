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


def _options(command) -> dict[str, bool]:
    """Every option spelling of a click command → hidden or not."""
    return {name: param.hidden for param in command.params for name in param.opts if name.startswith("--")}


def test_one_name_per_concept_across_commands():
    """The predictor is --model, the generator --generator, the JMAK prior --prior; old spellings are hidden."""
    import typer

    from matmeta.cli import app

    root = typer.main.get_command(app)
    commands = {name: root.commands[name] for name in ("predict", "finetune", "explain", "generate", "calibrate")}
    commands |= {f"jmak {name}": root.commands["jmak"].commands[name] for name in ("fit", "explain")}
    options = {name: _options(command) for name, command in commands.items()}
    for name in ("predict", "finetune", "explain", "generate", "calibrate"):
        assert options[name]["--model"] is False, name
    assert options["generate"]["--generator"] is False and options["generate"]["--gap-half-width"] is False
    assert options["jmak fit"]["--prior"] is False and options["jmak explain"]["--prior"] is False
    for name, spelled in options.items():
        for old in ("--checkpoint", "--predictor", "--tolerance"):
            assert spelled.get(old, True) is True, f"{name} {old}"  # absent, or kept hidden for one release


def test_an_option_given_under_its_old_and_new_name_is_refused_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "matmeta.cli", "calibrate", str(tmp_path / "absent.toml"),
         "--checkpoint", "a.ckpt", "--model", "b.ckpt"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --checkpoint and --model: the same option twice (--checkpoint is its old name); give --model only"
    )
