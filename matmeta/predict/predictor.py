"""Predictor app: predict heat of formation and band gap of crystals; adapt to a new family in seconds.

* :meth:`Predictor.load` reads a predictor checkpoint (default: the shipped one) and refuses
  checkpoints of another kind, model or configuration with one clear line.
* :meth:`Predictor.predict_structures` builds graphs with the checkpoint's own graph settings,
  predicts under ``eval()`` + ``inference_mode`` and attaches a calibrated uncertainty
  (Monte-Carlo dropout spread, scaled so that 90% intervals cover 90% on validation families).
* :meth:`Predictor.finetune` adapts the meta-learned start to 1–50 labelled structures with
  the engine's inner loop (the meta-learned steps and rates); only these fast weights change.
  It reports the leave-one-out error adapted vs unadapted and keeps the unadapted weights when
  adaptation does not help.
* :func:`matmeta.predict.train.meta_train_from_recipe` trains the checkpoint from a recipe (``matmeta meta-train``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.checkpoint import SHIPPED_DIR as CHECKPOINT_DIR
from matmeta.checkpoint import expect, load_checkpoint, load_state_strict, save_checkpoint
from matmeta.errors import CheckpointError, MatmetaInputError
from matmeta.meta.maml import MAML
from matmeta.models.gnn import CrystalGNN, GNNConfig, GraphBatch, collate
from matmeta.predict.config import MAMLSettings, build_maml
from matmeta.predict.data import (
    ENERGY,
    GAP,
    MEASURED,
    TargetNames,
    TargetStats,
    graph_from_structure,
    loss_fn,
    map_unknown,
)
from matmeta.predict.report import FinetuneReport

#: The shipped predictors by name (``--model mp``, ``--model perovskites``); ``mp`` is the default.
SHIPPED = {
    "mp": CHECKPOINT_DIR / "CrystalGNN-MP-2026-12-07-PBE.ckpt",
    "perovskites": CHECKPOINT_DIR / "CrystalGNN-Perovskites-2026-11-29-GapDescriptors.ckpt",
}
DEFAULT_CHECKPOINT = SHIPPED["mp"]


def resolve_model(path: str | Path | None) -> Path:
    """A checkpoint path from ``--model``: None → the default, a shipped name (``mp``, ``perovskites``) → its file.

    A file of that name in the working folder wins over the shipped name.
    """
    if path is None:
        return DEFAULT_CHECKPOINT
    if str(path) in SHIPPED and not Path(path).exists():
        return SHIPPED[str(path)]
    return Path(path)


MODEL_CLASS = "CrystalGNN"
__all__ = ["Predictor", "FinetuneReport"]


class Predictor:
    """A loaded predictor checkpoint: the model, its graph settings, target statistics and engine.

    Use :meth:`load`; the constructor takes already-checked parts.
    """

    def __init__(
        self,
        maml: MAML,
        metadata: dict[str, Any],
        path: Path | None = None,
        fast: dict[str, Tensor] | None = None,
        measured: MAML | None = None,
        measured_fast: dict[str, Tensor] | None = None,
    ) -> None:
        from matmeta.graphs import GraphConfig

        self.maml = maml
        self.fast = fast  # adapted weights by name (the engine's fast weights); None: the checkpoint's own
        self.measured = measured  # the measured-level gap head (engine-wrapped), or None
        self.measured_fast = measured_fast  # its adapted weights after a finetune on measured gaps
        self.metadata = metadata
        self.path = path
        self.stats = TargetStats(**metadata["targets"]["stats"])
        self.names = TargetNames.from_metadata(metadata["targets"])
        self.graph_config = GraphConfig(**metadata["graph_config"])
        self.elements_seen = {int(z) for z in metadata["elements_seen"]}
        self.uncertainty = dict(metadata.get("uncertainty", {}))
        self.sites_seen = metadata.get("sites_seen")
        self.loss = loss_fn

    @property
    def model(self) -> CrystalGNN:
        """The network (at the checkpoint's weights; :meth:`forward` applies adapted ones)."""
        return self.maml.model  # type: ignore[return-value]

    def forward(self, *inputs: Any, **kwargs: Any) -> Tensor:
        """The network at this predictor's weights: the adapted fast weights when there are any."""
        return self.maml(*inputs, params=self.fast, **kwargs)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Predictor:
        """Read a predictor checkpoint: a path, a shipped name (``mp``, ``perovskites``), or None (the default).

        Raises:
            CheckpointError: missing, corrupt, pickled, another kind or model, or weights that do
                not match the stored configuration.
        """
        from matmeta.graphs import GraphConfig
        from matmeta.recipes import config_from_dict

        path = resolve_model(path)
        tensors, metadata = load_checkpoint(path)
        expect(metadata, path, kind="predictor")
        expect(metadata, path, model_class=MODEL_CLASS)
        for key in ("model_config", "graph_config", "targets", "maml", "elements_seen"):
            if key not in metadata:
                raise CheckpointError(f"{path}: predictor checkpoint without {key!r} in its metadata")
        try:
            TargetNames.from_metadata(metadata["targets"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: checkpoint predicts {metadata['targets'].get('names')}: {exc}") from None
        try:
            model_config = config_from_dict(GNNConfig, metadata["model_config"], f"{path}: model_config")
            settings = config_from_dict(MAMLSettings, metadata["maml"], f"{path}: maml")
            GraphConfig(**metadata["graph_config"])
            TargetStats(**metadata["targets"]["stats"])
        except Exception as exc:  # RecipeError, TypeError, ValueError: a config this code cannot build
            raise CheckpointError(f"{path}: unusable predictor configuration ({exc})") from None
        if abs(model_config.cutoff_angstrom - float(metadata["graph_config"]["cutoff_angstrom"])) > 1e-9:
            raise CheckpointError(f"{path}: model cutoff differs from the graph cutoff it was trained with")
        maml = build_maml(model_config, settings, inference=True)
        from matmeta.predict.measured import POOLED_PREFIX, PREFIX, build_head

        base = {k: v for k, v in tensors.items() if not k.startswith((PREFIX, POOLED_PREFIX))}
        load_state_strict(maml, base, path)
        maml.eval()
        measured = None
        if "measured_gap" in metadata:  # the measured-level gap head (matmeta.predict.measured)
            try:
                measured = build_head(metadata["measured_gap"])
            except Exception as exc:  # noqa: BLE001 - RecipeError, KeyError, TypeError: a config this code cannot build
                raise CheckpointError(f"{path}: unusable measured_gap entry ({exc})") from None
            own = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
            load_state_strict(measured, own, path)
        return cls(maml, metadata, path, measured=measured)

    # ------------------------------------------------------------------ graphs
    def graphs(self, structures: Sequence[Any]) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[str | None]]:
        """Graphs with the checkpoint's graph settings, and a warning per structure (unknown elements).

        Raises:
            MatmetaInputError: a structure that cannot become a graph (e.g. an isolated atom).
        """
        pairs = [self.model_graph(*graph_from_structure(structure, self.graph_config)) for structure in structures]
        return [graph for graph, _ in pairs], [warning for _, warning in pairs]

    def model_graph(
        self, z: Tensor, edge_index: Tensor, edge_dist: Tensor
    ) -> tuple[tuple[Tensor, Tensor, Tensor], str | None]:
        """A graph built with :attr:`graph_config` as the network takes it, and its unseen-element warning."""
        from matmeta.predict.domain import unseen_warning

        identity = self.model.config.node_features == "embedding"
        unseen = sorted({int(a) for a in z.tolist()} - self.elements_seen)
        graph = (map_unknown(z, self.elements_seen) if identity else z, edge_index, edge_dist)
        return graph, unseen_warning(unseen, identity)

    def out_of_domain(self, structure: Any, row: dict[str, Any] | None = None) -> str | None:
        """Why ``structure`` lies outside the training data, or None.

        An element never seen in training (or, for a checkpoint with site labels, at a new A/B/X site or
        another structure type: :func:`matmeta.predict.domain.domain_flags`); with its prediction ``row``,
        also a distance to the training data in the network's features beyond the farthest structure of
        the calibration families (``difficulty.domain_limit``): its interval is then an extrapolation.
        """
        from matmeta.predict.domain import domain_flags, unseen_elements

        reasons = [domain_flags(structure, self.sites_seen) if self.sites_seen else unseen_elements(
            structure, self.elements_seen
        )]  # fmt: skip
        limit = (self.uncertainty.get("difficulty") or {}).get("domain_limit")
        distance = (row or {}).get("feature_distance")
        if limit is not None and distance is not None and distance > float(limit):
            reasons.append(f"feature distance {distance:.2f} beyond the calibration's {float(limit):.2f}")
        return "; ".join(r for r in reasons if r) or None

    # ------------------------------------------------------------------ predict
    def predict_graphs(
        self,
        graphs: Sequence[tuple[Tensor, Tensor, Tensor]],
        mc_samples: int | None = None,
        chunk: int = 512,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        """Predictions for ready graphs (see :meth:`predict_structures` for the keys)."""
        from matmeta.predict.kriging import head_features
        from matmeta.predict.rows import decode_rows

        samples = int(mc_samples if mc_samples is not None else self.uncertainty.get("mc_samples", 32))
        nan_y = torch.full((3,), math.nan)
        rows: list[dict[str, float]] = []
        self.maml.eval()
        with torch.inference_mode():
            for begin in range(0, len(graphs), chunk):
                batch = collate([(*g, nan_y) for g in graphs[begin : begin + chunk]])
                with head_features(self.model) as captured:
                    if samples > 1:  # the point and the MC samples from one pass of the graph part
                        both = self.forward(*batch.inputs(), mc_samples=samples, mc_seed=seed, include_point=True)
                        point, mc = both[0], both[1:]
                    else:
                        point, mc = self.forward(*batch.inputs()), None
                rows.extend(decode_rows(self, point, mc, batch, captured["features"]))
        return rows

    def predict_structures(self, structures: Sequence[Any], mc_samples: int | None = None) -> list[dict[str, Any]]:
        """Predict every structure.

        Returns:
            One dict per structure, keyed by the checkpoint's target names (see ``rows.decode_rows``; for the
            perovskite checkpoint): ``heat_ref`` and ``heat_ref_std`` (eV/cell), ``band_gap`` and
            ``band_gap_std`` (eV; 0 when predicted metallic), ``p_metal``, ``gap_if_nonmetal`` (eV; with
            ``gap_shift`` eV added for a B site never seen in training, see :meth:`new_family_rows`),
            the 90% intervals ``heat_ref_lo``/``heat_ref_hi`` and ``gap_lo``/``gap_hi`` (gap if
            non-metal), ``out_of_domain`` (str or None, see :mod:`matmeta.predict.domain`) and ``warning``
            (str or None, e.g. for elements never seen in training).
        """
        graphs, warnings = self.graphs(structures)
        rows = self.new_family_rows(self.predict_graphs(graphs, mc_samples=mc_samples), structures)
        return [
            {**self.with_domain(structure, row), "warning": warning}
            for row, warning, structure in zip(rows, warnings, structures, strict=True)
        ]

    def with_domain(self, structure: Any, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its ``out_of_domain`` reason; an energy interval that cannot widen is dropped out of domain.

        A checkpoint calibrated with distance-scaled energy widths widens the interval itself; an older one
        (the perovskite checkpoint) states one width for every structure, which is uncalibrated for a structure
        unlike its training data: ``E_lo`` / ``E_hi`` become None there.
        """
        reason = self.out_of_domain(structure, row)
        out = {**row, "out_of_domain": reason}
        table = (self.uncertainty.get("conformal") or {}).get("zero_shot", {})
        if reason and "heat_ref_per_atom_scaled" not in table:
            energy = self.names.energy
            out[f"{energy}_lo"] = out[f"{energy}_hi"] = None
        return out

    def new_family_rows(self, rows: list[dict[str, Any]], structures: Sequence[Any]) -> list[dict[str, Any]]:
        """``rows`` with the checkpoint's new-family corrections (:func:`matmeta.predict.domain.corrected_rows`)."""
        from matmeta.predict.domain import corrected_rows

        return corrected_rows(self, rows, structures)

    @property
    def new_family_platt(self) -> dict[str, float] | None:
        """The checkpoint's P(non-metal) recalibration for new B sites (``a``, ``b``), or None."""
        return self.uncertainty.get("new_family_platt")

    @property
    def new_family_cut(self) -> float:
        """The non-metal cut on the recalibrated P of a new B site: the same calls as :attr:`nonmetal_cut` on raw P."""
        from matmeta.conformal import platt

        coefficients = self.new_family_platt
        if not coefficients:
            return self.nonmetal_cut
        return float(platt(self.nonmetal_cut, coefficients["a"], coefficients["b"]))

    @property
    def nonmetal_cut(self) -> float:
        """P(non-metal) at or above which a structure is called a non-metal (chosen on the calibration families)."""
        return float(self.uncertainty.get("nonmetal_threshold", 0.5))

    def target_values(self, outputs: Tensor, batch: GraphBatch, target: str) -> Tensor:
        """Model outputs (G, 3) → predictions of ``target`` in its public unit, shape (G,) (differentiable)."""
        if self.names.role(target) == ENERGY:
            energy = self.stats.decode_heat(outputs[:, 0], batch.n_atoms)
            return energy / batch.n_atoms if self.names.energy_per_atom else energy
        metal = 1.0 - torch.sigmoid(outputs[:, 1]) < self.nonmetal_cut
        return torch.where(metal, 0.0, self.stats.decode_gap(outputs[:, 2]))

    # ------------------------------------------------------------------ finetune
    def finetune(
        self,
        structures: Sequence[Any],
        values: Sequence[float],
        target: str,
        steps: int | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[Predictor, FinetuneReport]:
        """Adapt to labelled structures of one family, keeping the best of five candidates by leave-one-out.

        The candidates (adapted, unadapted, linear recalibration, support mean) are described in
        :mod:`matmeta.predict.adaptation`; the kept one is written into the returned predictor's metadata.

        Args:
            structures: 1–50 pymatgen structures.
            values: the measured ``target`` of each, in its unit (the unit is part of the name: eV/atom,
                eV/cell or eV).
            target: one of the checkpoint's target names (:attr:`names`).
            steps: inner steps (default: the meta-learned number).
            names: labels of the structures for error messages.

        Returns:
            The adapted predictor (a copy; this one is unchanged) and the report.

        Raises:
            CheckpointError: the checkpoint does not predict ``target``.
            MatmetaInputError: no structures, or a non-finite / negative value.
        """
        from matmeta.predict.adaptation import finetune

        role = self.check_target(target)
        names = list(names) if names is not None else [f"structure {i + 1}" for i in range(len(structures))]
        values_arr = np.asarray(values, dtype=float)
        if len(structures) == 0 or len(structures) != len(values_arr):
            raise MatmetaInputError(f"support set: need ≥ 1 structure with one value each, got {len(structures)}")
        for name, value in zip(names, values_arr, strict=True):
            if not math.isfinite(value) or (role in (GAP, MEASURED) and value < 0):
                raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
        if role == MEASURED:
            from matmeta.predict.measured_adapt import finetune_measured

            return finetune_measured(self, list(structures), values_arr, steps)
        items = self.support_items(structures, values_arr, target)
        n_atoms = np.array([item[0].shape[0] for item in items], dtype=float)
        internal = self.names.to_cell(values_arr, n_atoms) if role == ENERGY else values_arr
        public = 1.0 / n_atoms if role == ENERGY and self.names.energy_per_atom else 1.0  # errors in target's unit
        steps = self.maml.inner_steps if steps is None else int(steps)
        fast, adapted, loo = finetune(self, items, internal, role, steps, public)
        report = FinetuneReport(
            target, self.names.unit(target if role == ENERGY else self.names.gap), len(items), steps,
            adapted["loo_mae"], adapted["kept"], [float(v) for v in loo["adapted"] * public],
            {kind: [float(v) for v in p * public] for kind, p in loo.items()},
        )  # fmt: skip
        adapted["target"] = self.names.energy if role == ENERGY else self.names.gap
        adapted["base_checkpoint"] = str(self.path.name if self.path else None)
        metadata = {**self.metadata, "adapted": adapted}
        return Predictor(self.maml, metadata, None, fast=fast, measured=self.measured), report

    @property
    def measured_cut(self) -> float:
        """P(non-metal) at or above which the measured level calls a non-metal (its validation families' cut)."""
        entry = self.metadata.get("measured_gap") or {}
        return float((entry.get("uncertainty") or {}).get("nonmetal_threshold", 0.5))

    def support_items(
        self, structures: Sequence[Any], values: Sequence[float], target: str
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Labelled structures as items for :func:`collate` / :func:`per_example_loss` (normalised targets).

        Shapes:
            each item: atomic_numbers (n,), edge_index (2, e), edge_dist (e,), y (3,).
        """
        role = self.check_target(target)
        graphs, _ = self.graphs(structures)
        n_atoms = np.array([g[0].shape[0] for g in graphs], dtype=float)
        nan = np.full(len(graphs), np.nan)
        values_arr = np.asarray(values, dtype=float)
        energy, gap = (self.names.to_cell(values_arr, n_atoms), nan) if role == ENERGY else (nan, values_arr)
        y = self.stats.encode(energy, gap, n_atoms)
        return [(*g, y[i]) for i, g in enumerate(graphs)]

    def check_target(self, target: str) -> str:
        """The role of a public target name of this checkpoint.

        Raises:
            CheckpointError: the checkpoint does not predict ``target`` (the message names what it predicts).
        """
        role = self.names.role(target)
        if role is None and target == "band_gap" and self.measured is not None:
            return MEASURED
        if role is None:
            where = self.path.name if self.path else "this predictor"
            names = [*self.names.names, *(["band_gap (measured)"] if self.measured is not None else [])]
            raise CheckpointError(f"{where} predicts {' and '.join(names)}; it has no target {target!r}")
        return role

    def save(self, path: str | Path) -> Path:
        """Write this predictor (weights incl. adapted ones, metadata) as a checkpoint."""
        from matmeta.predict.measured import PREFIX

        state = self.maml.state_dict()
        for name, value in (self.fast or {}).items():
            state[f"model.{name}"] = value.detach()
        if self.measured is not None:
            head = self.measured.state_dict()
            for name, value in (self.measured_fast or {}).items():
                head[f"model.{name}"] = value.detach()
            state.update({PREFIX + k: v for k, v in head.items()})
        return save_checkpoint(path, state, self.metadata)
