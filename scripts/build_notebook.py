"""Build a notebook from its source and run it, so that it is stored with its outputs and figures.

``notebooks/src/<name>.py`` holds the cells: a line ``# %% [markdown]`` starts a markdown cell (its lines are
the comment lines that follow, ``# `` stripped), a line ``# %%`` starts a code cell. The script writes
``notebooks/<name>.ipynb`` and executes it top to bottom in ``notebooks/`` (the tests execute it again).

    python scripts/build_notebook.py 01_predict_any_crystal [02_few_shot_measured_gaps ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def cells_of(source: str) -> list:
    """The notebook cells of a source file."""
    cells, kind, lines = [], None, []

    def close() -> None:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        if line.startswith("# %% [markdown]"):
            close()
            kind, lines = "markdown", []
        elif line.startswith("# %%"):
            close()
            kind, lines = "code", []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind == "code":
            lines.append(line)
    close()
    return cells


def build(name: str) -> Path:
    """Write and execute ``notebooks/<name>.ipynb``; returns its path."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells_of((NOTEBOOKS / "src" / f"{name}.py").read_text())
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = time.perf_counter()
    resources = {"metadata": {"path": str(NOTEBOOKS)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    path = NOTEBOOKS / f"{name}.ipynb"
    nbformat.write(notebook, path)
    print(f"{path}: {len(notebook.cells)} cells, executed in {time.perf_counter() - start:.0f} s")
    return path


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        build(argument)
