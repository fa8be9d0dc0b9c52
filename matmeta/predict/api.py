"""The predictor app's surface, as the command line uses it: load, predict files, adapt to a support CSV, meta-train.

Each function reads its inputs, reports bad items as one-line messages (the good ones are still
processed) and returns plain values; :mod:`matmeta.commands.predict` only parses and renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matmeta.console import report_error, warn
from matmeta.errors import MatmetaInputError
from matmeta.predict.predictor import FinetuneReport, Predictor
from matmeta.predict.support import MAX_SUPPORT_ROWS, read_support

MAX_SUGGESTED_SUPPORT = 50


def load(checkpoint: str | Path | None = None) -> Predictor:
    """A predictor checkpoint (None: the shipped default); see :meth:`Predictor.load`."""
    return Predictor.load(checkpoint)


def predict_named(
    predictor: Predictor,
    named: list[tuple[str, Any]],
    sensitivity: float | None = None,
    graphs: Sequence[Any] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predictions for named structures; structures that cannot become graphs are reported, not fatal.

    ``sensitivity``: ε in Å; each row also gets the worst change of each property under displacements of at
    most ε per atom (:mod:`matmeta.predict.sensitivity`).
    ``graphs``: each structure's graph arrays (or the reason it has none) already built with the checkpoint's
    graph settings (:func:`matmeta.graph_reading.read_graphs`); None builds them here.
    """
    import torch

    ready, warnings, names, formulas, bad, good = [], [], [], [], [], []
    for index, (name, structure) in enumerate(named):
        source = structure.properties.get("source", name)
        try:
            if graphs is None:
                (graph,), (warning,) = predictor.graphs([structure])
            elif isinstance(graphs[index], str):
                raise MatmetaInputError(graphs[index])
            else:
                graph, warning = predictor.model_graph(*(torch.from_numpy(a) for a in graphs[index]))
        except MatmetaInputError as exc:
            bad.append(f"{source}: {exc}")
            continue
        ready.append(graph)
        warnings.append(warning)
        names.append(name)
        formulas.append(structure.composition.reduced_formula)
        good.append(structure)
    rows = predictor.predict_rows(ready, good) if ready else []
    out = [
        {"name": n, "path": str(s.properties.get("source", "")), "formula": f, **row, "warning": w}
        for n, s, f, row, w in zip(names, good, formulas, rows, warnings, strict=True)
    ]
    if sensitivity is not None and out:
        from matmeta.predict.sensitivity import sensitivity_rows

        out = [{**row, **more} for row, more in zip(out, sensitivity_rows(predictor, good, sensitivity), strict=True)]
    return out, bad


def predict_files(
    sources: Sequence[str],
    model: str | Path | None = None,
    mc_samples: int | None = None,
    sensitivity: float | None = None,
    workers: int | None = None,
) -> tuple[Predictor, list[dict[str, Any]], list[str]]:
    """``matmeta predict``: every readable structure of ``sources`` (files, folders, globs) predicted.

    ``sensitivity``: ε in Å (see :func:`predict_named`). ``workers``: processes that read the files and
    build their graphs (None: every available core for a batch of
    :data:`matmeta.graph_reading.MIN_PARALLEL_FILES` files or more, else 1).

    Returns:
        The predictor, one row per structure (``name``, ``formula``, the keys of
        :meth:`Predictor.predict_structures`) and one message per input that could not be used.
    """
    from matmeta.graph_reading import read_graphs

    predictor = load(model)
    if mc_samples is not None:
        predictor.uncertainty["mc_samples"] = mc_samples
    read, bad = read_graphs(list(sources), predictor.graph_config, workers)
    named = [(name, structure) for name, structure, _ in read]
    graphs = [graph for _, _, graph in read]
    rows, bad_graphs = predict_named(predictor, named, sensitivity, graphs) if named else ([], [])
    return predictor, rows, bad + bad_graphs


def adapt(
    support: Path,
    target: str,
    model: str | Path | None = None,
    value_column: str | None = None,
    path_column: str = "path",
    cif_column: str = "cif",
    steps: int | None = None,
    yes: bool = False,
    match_store: Path | None = None,
    robust: bool = False,
) -> tuple[Predictor, FinetuneReport, list[str]]:
    """``matmeta finetune``: adapt to the labelled structures of a support CSV.

    Args:
        support: the support CSV (see :mod:`matmeta.predict.support`).
        target: one of the model's target names (``formation_energy_per_atom``, ``band_gap_pbe``; ``heat_ref``,
            ``band_gap`` for the perovskite model).
        model: the checkpoint to start from (None: the shipped one).
        value_column: column with the values (default: ``target``).
        path_column: column with structure paths.
        cif_column: column with CIF text.
        steps: inner steps (default: the meta-learned number).
        yes: lift the ceiling of :data:`MAX_SUPPORT_ROWS` support rows (the leave-one-out check
            adapts once per row, so its cost grows as rows²).
        match_store: a graph store in which a row with only a ``formula`` finds its structure (refused without).
        robust: adapt with the robust loss (:mod:`matmeta.predict.robust`).

    Returns:
        The adapted predictor, the report (leave-one-out errors, what was kept) and one message per
        unusable support row, plus one when the adaptation diverged (non-finite leave-one-out error).

    Raises:
        MatmetaInputError: no usable labelled structure; a non-finite unadapted error.
        WorkLimitError: more support rows than the ceiling without ``yes``.
    """
    predictor = load(model)
    predictor.check_target(target)  # before any structure is read
    max_rows = None if yes else MAX_SUPPORT_ROWS
    names, structures, values, bad = read_support(
        support, target, value_column, path_column, cif_column, max_rows, match_store=match_store
    )
    if not structures:
        for message in bad:
            report_error(message)
        raise MatmetaInputError(f"{support}: no usable labelled structure")
    if len(structures) > MAX_SUGGESTED_SUPPORT:
        warn(
            f"{support}: {len(structures)} structures; finetune is meant for 1-{MAX_SUGGESTED_SUPPORT} "
            f"(leave-one-out adapts {len(structures)} times)"
        )
    adapted, report = predictor.finetune(structures, values, target, steps=steps, names=names, robust=robust)
    if not math.isfinite(report.loo_mae_unadapted):
        raise MatmetaInputError(
            f"{support}: the unadapted model gives a non-finite error on these values; nothing written"
        )
    if len(structures) > 1 and not math.isfinite(report.loo_mae_adapted):
        bad.append(
            f"{support}: adaptation diverged (leave-one-out MAE {report.loo_mae_adapted}); kept {report.kept} weights"
        )
    return adapted, report, bad


def meta_train(recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """``matmeta meta-train`` of a predictor recipe; returns the checkpoint path."""
    from matmeta.predict.train import meta_train_from_recipe
    from matmeta.recipes import load_recipe

    return meta_train_from_recipe(load_recipe(recipe_path), Path(recipe_path), out=out, steps=steps)
