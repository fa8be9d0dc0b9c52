"""The files of ``matmeta/predict/`` that one prediction passes through, and how often it comes back to each.

    python scripts/trace_predict_path.py [CIF] [--model NAME]

Runs ``matmeta predict CIF`` in this process under ``sys.setprofile`` and records, for every Python call, the file
of the called function. The path is that sequence restricted to ``matmeta/predict/*.py`` with consecutive repeats
collapsed (a call inside the same file is not a move). A file's re-entries are its appearances in the path after
the first: the number of times the prediction left it and came back (the measure of issue 32). Comprehension and
generator-expression frames are not calls into a file (they run inside their function; Python 3.12 inlines them,
PEP 709) and are skipped.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

INLINE = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")
ROOT = Path(__file__).resolve().parents[1]
PREDICT = ROOT / "matmeta" / "predict"


def trace(argv: list[str]) -> list[str]:
    """The collapsed sequence of predict/ files entered while running the CLI with ``argv``."""
    from typer.testing import CliRunner

    from matmeta.cli import app

    runner = CliRunner()
    runner.invoke(app, argv)  # warm-up: imports and caches must not count as the path
    path: list[str] = []

    def profile(frame, event, arg):  # noqa: ANN001, ARG001 - the sys.setprofile signature
        if event != "call" or frame.f_code.co_name in INLINE:
            return
        file = Path(frame.f_code.co_filename)
        if file.parent == PREDICT and (not path or path[-1] != file.name):
            path.append(file.name)

    sys.setprofile(profile)
    try:
        result = runner.invoke(app, argv)
    finally:
        sys.setprofile(None)
    if result.exit_code != 0:
        raise SystemExit(f"predict failed: {result.output}")
    return path


def main() -> None:
    """Print the path of ``matmeta predict`` on one file (default: data/structures/Si.cif)."""
    args = sys.argv[1:]
    cif = args[0] if args and not args[0].startswith("--") else str(ROOT / "data" / "structures" / "Si.cif")
    model = args[args.index("--model") + 1] if "--model" in args else None
    argv = ["predict", cif] + (["--model", model] if model else [])
    path = trace(argv)
    counts = Counter(path)
    print(f"predict/ files passed through: {len(counts)}; re-entries in all: {sum(c - 1 for c in counts.values())}")
    for name, count in counts.most_common():
        print(f"  {name:24s} entered {count}x (re-entered {count - 1}x)")
    print("path:", " > ".join(path))


if __name__ == "__main__":
    main()
