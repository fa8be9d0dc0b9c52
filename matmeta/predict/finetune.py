"""``Predictor.finetune``: the support set's checks, then the candidates of the network's targets or the measured level.

The network's own targets (energy, PBE-level gap) go to :func:`matmeta.predict.adaptation.finetune` (five
candidates by leave-one-out); the measured-level gap to :func:`matmeta.predict.measured_adapt.finetune_measured`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from matmeta.predict.adaptation import finetune
from matmeta.predict.data import ENERGY


def finetune_predictor(
    predictor: Any,
    structures: Sequence[Any],
    values: Sequence[float],
    target: str,
    steps: int | None = None,
    names: Sequence[str] | None = None,
    robust: bool = False,
) -> tuple[Any, Any]:
    """``Predictor.finetune`` (its docstring has the arguments): the checks, then :func:`finetune`.

    The predictor is built with ``type(predictor)`` (this module does not import the class that imports it).
    """
    from matmeta.errors import MatmetaInputError
    from matmeta.predict.data import GAP, MEASURED
    from matmeta.predict.report import FinetuneReport

    role = predictor.check_target(target)
    names = list(names) if names is not None else [f"structure {i + 1}" for i in range(len(structures))]
    values_arr = np.asarray(values, dtype=float)
    if len(structures) == 0 or len(structures) != len(values_arr):
        raise MatmetaInputError(f"support set: need ≥ 1 structure with one value each, got {len(structures)}")
    for name, value in zip(names, values_arr, strict=True):
        if not math.isfinite(value) or (role in (GAP, MEASURED) and value < 0):
            raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
    if role == MEASURED:
        if robust:
            raise MatmetaInputError("--robust adapts the network's own targets, not the measured band_gap")
        from matmeta.predict.measured_adapt import finetune_measured

        return finetune_measured(predictor, list(structures), values_arr, steps)
    items = predictor.support_items(structures, values_arr, target)
    n_atoms = np.array([item[0].shape[0] for item in items], dtype=float)
    internal = predictor.names.to_cell(values_arr, n_atoms) if role == ENERGY else values_arr
    public = 1.0 / n_atoms if role == ENERGY and predictor.names.energy_per_atom else 1.0  # errors in target's unit
    steps = predictor.maml.inner_steps if steps is None else int(steps)
    support = None
    if robust:
        from matmeta.predict.robust import RobustSupport

        support = RobustSupport.for_structures(structures, predictor)
    fast, adapted, loo = finetune(predictor, items, internal, role, steps, public, support)
    report = FinetuneReport(
        target, predictor.names.unit(target if role == ENERGY else predictor.names.gap), len(items), steps,
        adapted["loo_mae"], adapted["kept"], [float(v) for v in loo["adapted"] * public],
        {kind: [float(v) for v in p * public] for kind, p in loo.items()},
    )  # fmt: skip
    adapted["target"] = predictor.names.energy if role == ENERGY else predictor.names.gap
    adapted["base_checkpoint"] = str(predictor.path.name if predictor.path else None)
    metadata = {**predictor.metadata, "adapted": adapted}
    return type(predictor)(predictor.maml, metadata, None, fast=fast, measured=predictor.measured), report
