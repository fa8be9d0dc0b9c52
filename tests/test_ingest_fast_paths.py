"""The ingest's quick paths give exactly what the general ones give.

Quick overlap check vs the LLL search, the packed edge sort vs the six-key lexsort, neighbours taken
from a larger search vs a fresh search, the record header vs ``json.dumps``, and the perovskite
anion-shell scores — on random cells built to hit the edge cases (pairs at the 0.5 Å limit, thin
and skewed cells, short lattice vectors, symmetric positions with tied distances).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from matmeta import structure_checks
from matmeta.errors import MatmetaInputError
from matmeta.geometry import dense_min_distance, neighbor_list, neighbors_within, wrap_fractional
from matmeta.graphs import _TIE_DECIMALS, edge_order
from matmeta.store.records import decode_record, encode_record


def _outcome(lattice, frac):
    try:
        structure_checks.check_cell(lattice, frac, "cell")
    except MatmetaInputError as exc:
        return str(exc)
    return "ok"


def _random_cell(rng):
    """A cell and coordinates near the overlap limit: about half pass, half fail, many by a hair."""
    n = int(rng.integers(1, 9))
    lattice = np.diag(rng.uniform(0.3, 5.0, 3)) + rng.normal(size=(3, 3)) * rng.uniform(0.0, 1.5)
    if rng.random() < 0.2:
        lattice[2] += rng.integers(-4, 5) * lattice[0]  # the same lattice in a skewed basis
    frac = rng.uniform(-2.0, 3.0, size=(n, 3))
    if n > 1 and rng.random() < 0.6:  # a pair at 0.5 Å ± a little, down to 1e-9 Å from the limit
        step = rng.normal(size=3)
        gap = 0.5 + rng.choice([-1, 1]) * 10.0 ** rng.uniform(-9, -1)
        frac[1] = frac[0] + (step * gap / np.linalg.norm(step)) @ np.linalg.inv(lattice)
    return lattice, frac


def test_quick_overlap_check_decides_like_the_lll_search(monkeypatch):
    rng = np.random.default_rng(7)
    cells = [_random_cell(rng) for _ in range(1500)]
    quick = [_outcome(lattice, frac) for lattice, frac in cells]
    monkeypatch.setattr(structure_checks, "_clearly_apart", lambda matrix, frac: False)
    exact = [_outcome(lattice, frac) for lattice, frac in cells]
    assert quick == exact
    overlaps = sum("overlap" in message for message in exact)
    assert exact.count("ok") > 200 and overlaps > 200  # both decisions are exercised


def test_dense_min_distance_is_the_shortest_distance_below_the_limit():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(300):
        lattice, frac = _random_cell(rng)
        wrapped = wrap_fractional(frac)
        quick = dense_min_distance(lattice, wrapped, 2.0)
        if quick is None:
            continue
        centers, _, _, dist = neighbor_list(lattice, wrapped @ lattice, 2.0)
        if len(dist):
            assert quick == pytest.approx(float(dist.min()), abs=1e-9)
            checked += 1
        else:
            assert quick >= 2.0 - 1e-9
    assert checked > 50


def test_dense_min_distance_declines_thin_and_large_cells():
    needle = np.diag([10.0, 10.0, 0.3])
    assert dense_min_distance(needle, np.zeros((1, 3)), 0.5) is None
    many = np.random.default_rng(0).uniform(size=(65, 3))
    assert dense_min_distance(np.eye(3) * 20.0, many, 0.5) is None
    # an atom and its own image one lattice vector away: 3 Å in a 3 Å cubic cell
    assert dense_min_distance(np.eye(3) * 3.0, np.zeros((1, 3)), 3.0) == pytest.approx(3.0)


def _lexsort_order(centers, neighbors, offsets, dist):
    return np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0], neighbors, np.round(dist, _TIE_DECIMALS), centers))


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_edge_order_equals_the_six_key_lexsort(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        lattice = np.eye(3) * rng.uniform(2.5, 5.0) if rng.random() < 0.5 else np.diag(rng.uniform(2.5, 5.0, 3))
        frac = np.round(rng.uniform(0, 1, size=(n, 3)) * 4) / 4  # symmetric sites: many tied distances
        centers, neighbors, offsets, dist = neighbor_list(lattice, frac @ lattice, float(rng.uniform(3.0, 9.0)))
        assert np.array_equal(
            edge_order(centers, neighbors, offsets, dist, n), _lexsort_order(centers, neighbors, offsets, dist)
        )
    # keys that do not fit one int64 fall back to the lexsort
    centers = np.array([1, 0, 0]), np.array([0, 1, 1])
    offsets = np.array([[0.0, 0, 900], [0, 0, -900], [0, 0, 1]])
    dist = np.array([1e6, 2e6, 2e6])
    order = edge_order(centers[0], centers[1], offsets, dist, 2**20)
    assert order.tolist() == _lexsort_order(centers[0], centers[1], offsets, dist).tolist() == [1, 2, 0]


def test_neighbors_within_matches_a_fresh_search():
    rng = np.random.default_rng(5)
    for _ in range(150):
        n = int(rng.integers(1, 6))
        lattice = np.diag(rng.uniform(2.5, 6.0, 3)) + rng.normal(size=(3, 3)) * 0.4
        cart = wrap_fractional(rng.uniform(size=(n, 3))) @ lattice
        found = neighbor_list(lattice, cart, 6.0)
        # cutoffs inside the radius, on a neighbour distance, and beyond the radius
        for cutoff in (float(rng.uniform(1.0, 5.9)), float(found[3][0]) if len(found[3]) else 3.0, 7.5):
            got = neighbors_within(found, 6.0, lattice, cart, cutoff)
            want = neighbor_list(lattice, cart, cutoff)

            def as_set(pairs):
                c, nb, off, d = pairs
                return set(zip(c.tolist(), nb.tolist(), map(tuple, off.tolist()), d.tolist(), strict=True))

            assert as_set(got) == as_set(want)


def _json_header_record(arrays, info):
    """The record layout written the plain way: a header dict through ``json.dumps``."""
    codes = {np.dtype(np.int64): "I64", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
    codes[np.dtype(np.uint8)] = "U8"
    header, chunks, offset = {"__metadata__": {"info": json.dumps(info)}}, [], 0
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])  # at least 1-D: a scalar is stored with shape [1]
        data = array.tobytes()
        header[key] = {"dtype": codes[array.dtype], "shape": list(array.shape)}
        header[key]["data_offsets"] = [offset, offset + len(data)]
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *chunks])


def test_record_header_is_what_json_dumps_writes():
    arrays = {
        "edge_index": np.arange(12, dtype=np.int64).reshape(2, 6),
        "edge_dist": np.linspace(1, 2, 6, dtype=np.float32),
        "y": np.zeros((1, 0), dtype=np.float32),
        "lattice": np.eye(3),
        "scalar": np.array(2.5),
        "cif": np.frombuffer(b"data_x\n", dtype=np.uint8),
    }
    for info in ({}, {"id": "r1", "families": {"column:note": 'x"},"\u00e9\n'}}, {"id": "ü", "v": [1, 2.5, None]}):
        raw = encode_record(arrays, info)
        assert raw == _json_header_record(arrays, info)
        decoded, got_info = decode_record(raw)
        assert got_info == info and np.array_equal(decoded["edge_index"], arrays["edge_index"])
