"""``make fuzz``: the fuzz suite's properties with many more generated inputs; crashes are recorded and fail.

Runs every hypothesis property of ``tests/test_fuzz_*.py`` in-process, ``--examples`` inputs in
all shared out by :data:`WEIGHTS` (random, not derandomized), counts the inputs tried and the
crashes (a non-``MatmetaError`` exception, a message over one line or not naming the input, or a
broken property) and writes each crashing input to ``--record`` for ``tests/fuzz_corpus/``.
A crash fails its property as it does in the test suite (hypothesis then shrinks it, so the
recorded inputs include the shrunk ones); the run goes on with the next property.
Exit status 1 when anything crashed.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/fuzz.py --examples 100000 --record out/fuzz
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ("test_fuzz_structures", "test_fuzz_tables")
#: Share of ``--examples`` per property: the cheap in-process readers get most, file batches the fewest.
WEIGHTS = {
    "test_cif_text_is_parsed_or_refused_in_one_line": 0.22,
    "test_fast_p1_reader_agrees_with_pymatgen": 0.10,
    "test_a_bad_file_never_costs_the_good_ones": 0.02,
    "test_predicts_reader_gives_the_good_files_graphs_and_names_the_bad_one": 0.02,
    "test_any_poscar_species_line_gives_real_elements_or_one_line": 0.02,
    "test_support_rows_are_used_or_skipped_by_row": 0.03,
    "test_points_rows_are_fitted_or_named": 0.44,
    "test_checkpoint_bytes_are_loaded_or_refused": 0.16,
    "test_a_failed_write_leaves_no_file": 0.03,
}


def main() -> int:
    """Parse the arguments, run every property, print the summary; 1 if anything crashed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="inputs in all (shared out by WEIGHTS)")
    parser.add_argument("--record", default="out/fuzz", help="folder for crashing inputs")
    parser.add_argument("--only", default=None, help="run only properties whose name contains this")
    args = parser.parse_args()
    os.environ["HYPOTHESIS_PROFILE"] = "fuzz"
    os.environ["MATMETA_FUZZ_RECORD"] = args.record
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    import fuzzing
    from hypothesis import settings

    examples: dict[str, int] = {}
    failures: list[str] = []
    started = time.perf_counter()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            test = getattr(module, name)
            if not name.startswith("test_") or not hasattr(test, "hypothesis"):
                continue
            if args.only and args.only not in name:
                continue
            examples[name] = 0
            inner = test.hypothesis.inner_test

            @functools.wraps(inner)
            def counted(*a: object, _inner=inner, _name=name, **k: object) -> None:
                examples[_name] += 1
                return _inner(*a, **k)

            test.hypothesis.inner_test = counted
            test = settings(max_examples=max(1, round(args.examples * WEIGHTS.get(name, 0.05))))(test)
            begun = time.perf_counter()
            try:
                test()
            except Exception as exc:  # noqa: BLE001 - a broken property: report it and go on
                failures.append(f"{name}: {''.join(traceback.format_exception_only(exc)).strip()}")
            print(f"{name}: {examples[name]} inputs in {time.perf_counter() - begun:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    print(
        f"fuzz: {sum(examples.values())} generated inputs, {fuzzing.COUNTS['inputs']} reader calls "
        f"({fuzzing.COUNTS['accepted']} accepted, {fuzzing.COUNTS['refused']} refused in one line), "
        f"{len(failures)} properties failed, {fuzzing.COUNTS['crashes']} crashing reader calls "
        f"(shrinking included), {seconds:.0f} s"
    )
    for failure in failures:
        print(f"property failed: {failure}")
    if fuzzing.COUNTS["crashes"]:
        print(f"crashing inputs recorded in {args.record}/")
    return 1 if failures or fuzzing.COUNTS["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
