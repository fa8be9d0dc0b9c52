"""Per-structure difficulty σ(x) for locally adaptive (normalised) conformal gap intervals.

The normalised split-conformal score is ``|y − ŷ| / σ(x)`` (Papadopoulos et al. 2008; Lei et al.,
JASA 113, 1094, 2018, sec. 5.2): the 90% half-width of a structure is then ``q · σ(x)``, wider where
σ is larger, with the same finite-sample guarantee as a constant width when calibration and test
points are exchangeable. Here

    σ(x) = offset + d₁(x) / scale,

with ``d₁(x)`` the Euclidean distance from the structure's gap-head features (the head's hidden
layer, :func:`matmeta.predict.kriging.head_features`, of the network that makes the prediction) to
the nearest TRAINING structure's features (base network), and ``scale`` the median ``d₁`` of the
validation non-metals (so σ is unit-free and ≈ offset + 1 for a typical validation structure).
A structure unlike anything in training gets a proportionally wider interval. The form and its
constants were chosen on validation families by leave-one-family-out cross-conformal
(the table in ``recipes/perovskites.toml``, ``[uncertainty]``); this module only computes it.

The reference features are stored in the checkpoint's JSON metadata as base64 float16 (~0.7 MB for
4,305 training structures × 64 features).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

KIND = "nearest_training_head_features"
OFFSET = 1.0  # chosen on validation families (offsets 0, 0.25, 0.5, 1 compared; recipes/perovskites.toml)
NEIGHBOURS = 1  # k of the k-nearest-neighbour mean distance (1, 5, 20 compared)


def encode_features(features: np.ndarray) -> dict[str, Any]:
    """(n, H) float features → a JSON-ready dict (base64 of little-endian float16, with the shape)."""
    array = np.ascontiguousarray(np.asarray(features, dtype="<f2"))
    return {"shape": list(array.shape), "dtype": "float16", "base64": base64.b64encode(array.tobytes()).decode()}


def decode_features(entry: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_features`; shape (n, H), float64."""
    raw = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f2")
    return raw.reshape(tuple(int(s) for s in entry["shape"])).astype(float)


def knn_distance(features: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS, chunk: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of each row of ``features`` to its ``k`` nearest rows of ``reference``.

    Shapes:
        features: (m, H); reference: (n, H) → (m,).
    """
    features, reference = np.asarray(features, float), np.asarray(reference, float)
    ref_sq = (reference * reference).sum(1)
    out = np.empty(len(features))
    k = min(k, len(reference))
    for begin in range(0, len(features), chunk):
        block = features[begin : begin + chunk]
        d2 = (block * block).sum(1)[:, None] + ref_sq[None, :] - 2.0 * block @ reference.T
        nearest = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
        out[begin : begin + chunk] = np.sqrt(nearest).mean(1)
    return out


def difficulty_entry(train_features: np.ndarray, calibration_features: np.ndarray) -> dict[str, Any]:
    """The checkpoint's ``difficulty`` entry: reference features, ``scale`` (median d of ``calibration_features``)."""
    reference = np.asarray(train_features, float).astype("<f2").astype(float)  # what will be stored
    scale = float(np.median(knn_distance(calibration_features, reference)))
    return {
        "kind": KIND, "neighbours": NEIGHBOURS, "offset": OFFSET, "scale": scale if scale > 0 else 1.0,
        "reference": encode_features(reference),
    }  # fmt: skip


def sigma(entry: dict[str, Any], features: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """σ(x) = offset + d_k(x) / scale for head ``features`` (m, H); shape (m,).

    ``reference`` may pass the already decoded reference features (to decode them once).
    """
    if entry.get("kind") != KIND:
        raise ValueError(f"unknown difficulty kind {entry.get('kind')!r}")
    reference = decode_features(entry["reference"]) if reference is None else reference
    distance = knn_distance(features, reference, int(entry.get("neighbours", NEIGHBOURS)))
    return float(entry["offset"]) + distance / float(entry["scale"])
