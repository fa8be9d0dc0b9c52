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

from matmeta.predict.intervals import KIND, NEIGHBOURS, decode_features, knn_distance, sigma  # noqa: F401 - re-exported

OFFSET = 1.0  # chosen on validation families (offsets 0, 0.25, 0.5, 1 compared; recipes/perovskites.toml)


def encode_features(features: np.ndarray) -> dict[str, Any]:
    """(n, H) float features → a JSON-ready dict (base64 of little-endian float16, with the shape)."""
    array = np.ascontiguousarray(np.asarray(features, dtype="<f2"))
    return {"shape": list(array.shape), "dtype": "float16", "base64": base64.b64encode(array.tobytes()).decode()}


def difficulty_entry(train_features: np.ndarray, calibration_features: np.ndarray) -> dict[str, Any]:
    """The checkpoint's ``difficulty`` entry: reference features, ``scale`` (median d of ``calibration_features``)."""
    reference = np.asarray(train_features, float).astype("<f2").astype(float)  # what will be stored
    scale = float(np.median(knn_distance(calibration_features, reference)))
    return {
        "kind": KIND, "neighbours": NEIGHBOURS, "offset": OFFSET, "scale": scale if scale > 0 else 1.0,
        "reference": encode_features(reference),
    }  # fmt: skip
