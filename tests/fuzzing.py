"""Hostile-input strategies and the one oracle of the fuzz suite (``tests/test_fuzz_*.py``, ``make fuzz``).

The oracle: a reader given any input either returns a valid result or raises a ``MatmetaError``
whose message is one line naming the input; any other exception is a crash, and a crash always fails the
test. Recording is additive: with ``MATMETA_FUZZ_RECORD=<folder>`` (``make fuzz``) each crashing input is
also written there (input bytes and reason) and counted, and every input tried is counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from matmeta.errors import MatmetaError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("MATMETA_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

RECORD = os.environ.get("MATMETA_FUZZ_RECORD")
COUNTS = {"inputs": 0, "refused": 0, "accepted": 0, "crashes": 0}

GOOD_CIF = (DATA / "structures" / "SrTiO3.cif").read_text()
GOOD_CIFS = [p.read_text() for p in sorted((DATA / "structures").glob("*.cif"))[:4]]
GOOD_POSCAR = (DATA / "structures_other" / "Si.vasp").read_text()
GOOD_XYZ = (DATA / "structures_other" / "ZnO.extxyz").read_text()
GOOD_SUPPORT = (DATA / "lab_perovskites.csv").read_text()
GOOD_POINTS = (DATA / "jmak_points.csv").read_text()

NUMBERS = st.one_of(
    st.sampled_from(["-4.0", "0", "-0.0", "1e308", "-1e308", "1e-300", "nan", "inf", "-inf", "?", ".", "180", "-90",
                     "0.0001", "359.9", "90(3)", "4.0(", "abc", "", "1e400", "3.9e+00"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
)  # fmt: skip
SYMBOLS = st.sampled_from(["Xx", "Q", "Sr2+", "O-", "D", "T", "Og", "Uue", "sr", "SR", "0", "*", "Fe3+", "''", "#"])


_ELEMENT = re.compile(r"\b(Sr|Ti|Si|Zn|O|Ba|Ca|Sn|K|Nb|Ta|La|Al|Cr|Fe|Zr|Na)\b")
_CELL = re.compile(r"(_cell_(?:length_[abc]|angle_\w+)\s+)(\S+)")


def _lines(text: str) -> list[str]:
    return text.split("\n")


@st.composite
def mutated_text(draw: Any, base: str | Any) -> str:
    """``base`` text after 1-4 hostile edits: truncation, byte flips, deleted/duplicated lines, absurd
    numbers, unknown species, CRLF, non-UTF-8 (as surrogate-escaped text), huge repetition."""
    text = draw(base) if isinstance(base, st.SearchStrategy) else base
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "delete", "duplicate", "number", "symbol", "cell", "crlf",
                                   "bytes", "repeat", "blank", "swap"]))  # fmt: skip
        lines = _lines(text)
        if op == "truncate":
            text = text[: draw(st.integers(0, max(len(text) - 1, 0)))]
        elif op == "flip" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + chr(draw(st.integers(0, 0x2FF))) + text[i + 1 :]
        elif op == "delete" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
            text = "\n".join(lines)
        elif op == "duplicate" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif op == "number":
            tokens = text.split(" ")
            numeric = [i for i, t in enumerate(tokens) if t.strip() and t.strip()[0] in "-.0123456789"]
            if numeric:
                tokens[draw(st.sampled_from(numeric))] = draw(NUMBERS)
                text = " ".join(tokens)
        elif op == "symbol":
            found = list(_ELEMENT.finditer(text))
            if found:
                hit = found[draw(st.integers(0, len(found) - 1))]
                text = text[: hit.start()] + draw(SYMBOLS) + text[hit.end() :]
        elif op == "cell":
            found = list(_CELL.finditer(text))
            if found:
                hit = found[draw(st.integers(0, len(found) - 1))]
                text = text[: hit.start(2)] + draw(NUMBERS) + text[hit.end(2) :]
        elif op == "crlf":
            text = text.replace("\n", "\r\n")
        elif op == "bytes":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.binary(min_size=1, max_size=8)).decode("latin-1") + text[i:]
        elif op == "repeat" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i] = [lines[i]] * draw(st.sampled_from([2, 50, 600]))
            text = "\n".join(lines)
        elif op == "blank":
            text = ""
        elif op == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


CIF_TEXT = mutated_text(st.sampled_from(GOOD_CIFS))
POSCAR_TEXT = mutated_text(GOOD_POSCAR)
XYZ_TEXT = mutated_text(GOOD_XYZ)


def _record(kind: str, payload: str | bytes, reason: str) -> None:
    folder = Path(RECORD or ".")
    folder.mkdir(parents=True, exist_ok=True)
    raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogateescape")
    digest = hashlib.sha1(raw).hexdigest()[:12]
    (folder / f"{kind}-{digest}.bin").write_bytes(raw)
    (folder / f"{kind}-{digest}.txt").write_text(reason)


def check(kind: str, payload: str | bytes, call: Callable[[], Any], names: str | None = None) -> Any:
    """Run ``call`` under the oracle; returns its result, or the ``MatmetaError`` it raised.

    Raises:
        AssertionError: a crash (also recorded under ``MATMETA_FUZZ_RECORD``).

    Args:
        kind: what is fuzzed (names recorded crashes).
        payload: the input (recorded with a crash).
        call: the reader.
        names: a string the error message must contain (the input's name or path).
    """
    COUNTS["inputs"] += 1
    try:
        result = call()
    except MatmetaError as exc:
        message = str(exc)
        problems = []
        if "\n" in message or "\r" in message:
            problems.append("message spans lines")
        if "Traceback" in message:
            problems.append("traceback text in message")
        if names is not None and names not in message:
            problems.append(f"message does not name {names!r}")
        if problems:
            return _crash(kind, payload, f"{'; '.join(problems)}: {message!r}")
        COUNTS["refused"] += 1
        return exc
    except Exception as exc:  # noqa: BLE001 - exactly what the oracle looks for
        return _crash(kind, payload, "".join(traceback.format_exception(exc)))
    COUNTS["accepted"] += 1
    return result


def _crash(kind: str, payload: str | bytes, reason: str) -> None:
    """Count and (with ``MATMETA_FUZZ_RECORD``) record a crash, then fail: recording never replaces failing."""
    COUNTS["crashes"] += 1
    if RECORD:
        _record(kind, payload, reason)
    raise AssertionError(f"{kind}: {reason}")


def valid_arrays(lattice: Any, frac: Any, numbers: Any) -> bool:
    """A parsed crystal that is usable: finite positive-volume cell, real elements, finite coordinates."""
    import numpy as np

    volume = abs(float(np.linalg.det(lattice)))
    return (
        bool(np.all(np.isfinite(lattice)))
        and math.isfinite(volume)
        and volume > 0
        and bool(np.all(np.isfinite(frac)))
        and len(numbers) > 0
        and all(1 <= int(z) <= 118 for z in numbers)
    )


def save_counts(path: str | Path) -> None:
    """Write :data:`COUNTS` as JSON (``make fuzz`` sums them over its processes)."""
    Path(path).write_text(json.dumps(COUNTS))
