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

import dataclasses
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
    TargetNames,
    TargetStats,
    graph_from_structure,
    loss_fn,
    map_unknown,
)

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


@dataclasses.dataclass
class FinetuneReport:
    """What :meth:`Predictor.finetune` did.

    Attributes:
        target: the target's public name (``formation_energy_per_atom``, ``band_gap_pbe``, ``heat_ref``, …).
        unit: unit of the target.
        n_support: labelled structures used.
        steps: inner steps.
        loo_mae: leave-one-out MAE of every candidate (:data:`matmeta.predict.adaptation.CHOICES`; NaN
            where it cannot be computed, e.g. one structure). ``unadapted`` is its plain MAE.
        kept: the candidate kept (lowest leave-one-out MAE).
        loo_predictions: the leave-one-out predictions of the adapted model.
        loo_by_candidate: the leave-one-out predictions of every candidate.
    """

    target: str
    unit: str
    n_support: int
    steps: int
    loo_mae: dict[str, float]
    kept: str
    loo_predictions: list[float]
    loo_by_candidate: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def loo_mae_adapted(self) -> float:
        """Leave-one-out MAE of the adapted model."""
        return self.loo_mae["adapted"]

    @property
    def loo_mae_unadapted(self) -> float:
        """MAE of the unadapted model."""
        return self.loo_mae["unadapted"]

    def message(self) -> str:
        """One human-readable summary line: which candidate was kept and by how much it beat the others."""
        maes = ", ".join(f"{kind} {mae:.4g}" for kind, mae in self.loo_mae.items() if math.isfinite(mae))
        base = f"leave-one-out MAE on {self.n_support} support structures ({self.unit}): {maes}"
        if self.n_support == 1:
            return base + "; one structure: no leave-one-out check possible, adapted weights kept"
        others = {k: v for k, v in self.loo_mae.items() if k != self.kept and math.isfinite(v)}
        runner = min(others, key=others.get) if others else None  # type: ignore[arg-type]
        margin = f", {others[runner] - self.loo_mae[self.kept]:.3g} {self.unit} better than {runner}" if runner else ""
        adapted, unadapted = self.loo_mae_adapted, self.loo_mae_unadapted
        worse = "; adaptation made it worse (or diverged)" if not adapted <= unadapted else ""
        return f"{base}; kept: {self.kept}{margin}{worse}"


class Predictor:
    """A loaded predictor checkpoint: the model, its graph settings, target statistics and engine.

    Use :meth:`load`; the constructor takes already-checked parts.
    """

    def __init__(
        self, maml: MAML, metadata: dict[str, Any], path: Path | None = None, fast: dict[str, Tensor] | None = None
    ) -> None:
        from matmeta.graphs import GraphConfig

        self.maml = maml
        self.fast = fast  # adapted weights by name (the engine's fast weights); None: the checkpoint's own
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
        load_state_strict(maml, tensors, path)
        maml.eval()
        return cls(maml, metadata, path)

    # ------------------------------------------------------------------ graphs
    def graphs(self, structures: Sequence[Any]) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[str | None]]:
        """Graphs with the checkpoint's graph settings, and a warning per structure (unknown elements).

        Raises:
            MatmetaInputError: a structure that cannot become a graph (e.g. an isolated atom).
        """
        graphs, warnings = [], []
        identity = self.model.config.node_features == "embedding"
        for structure in structures:
            z, edge_index, edge_dist = graph_from_structure(structure, self.graph_config)
            unseen = sorted({int(a) for a in z.tolist()} - self.elements_seen)
            warnings.append(_unseen_warning(unseen, identity))
            graphs.append((map_unknown(z, self.elements_seen) if identity else z, edge_index, edge_dist))
        return graphs, warnings

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
                rows.extend(self._rows(point, mc, batch, captured["features"]))
        return rows

    def predict_structures(self, structures: Sequence[Any], mc_samples: int | None = None) -> list[dict[str, Any]]:
        """Predict every structure.

        Returns:
            One dict per structure, keyed by the checkpoint's target names (see :meth:`_rows`; for the
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
        """``rows`` with the new-family corrections (zero-shot only: none once the checkpoint is adapted)."""
        from matmeta.predict.domain import new_family_corrections

        adapted = self.metadata.get("adapted") or {}
        keys = ("new_family_gap_shift", "new_family_gap_shift_adapted", "new_family_platt")
        if not any(self.uncertainty.get(key) for key in keys):  # a checkpoint without new-family corrections
            return rows
        if self.fast is not None or adapted:  # the inner loop without gap labels keeps the offset
            from matmeta.predict.intervals import adapted_role

            blind = adapted.get("kept") == "adapted" and adapted_role(adapted) != GAP
            shift = float(self.uncertainty.get("new_family_gap_shift_adapted", 0.0)) if blind else 0.0
            return new_family_corrections(rows, structures, self.metadata["families"], shift)
        shift = float(self.uncertainty.get("new_family_gap_shift", 0.0))
        return new_family_corrections(rows, structures, self.metadata["families"], shift, self.new_family_platt)

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

    def _rows(self, point: Tensor, mc: Tensor | None, batch: GraphBatch, features: Tensor) -> list[dict[str, Any]]:
        """Decode model outputs (point (G, 3), MC samples (S, G, 3), head features (G, H)) into rows.

        Keys, for the checkpoint's targets E (energy) and G (gap): ``E``, ``E_std``, ``E_lo``, ``E_hi`` (90%
        interval) in E's unit; ``G`` (0 when called metal), ``G_std``, ``G_lo``, ``G_hi``; ``p_metal``;
        ``gap_if_nonmetal`` with ``gap_lo`` / ``gap_hi``; ``feature_distance`` (σ(x) − 1: distance to the
        training data in units of the calibration's median, None without a difficulty entry). A checkpoint
        whose gap is not ``band_gap`` also gets ``band_gap``, its gap until a measured-level one exists.
        """
        from matmeta.predict.adaptation import transform
        from matmeta.predict.intervals import (
            _sigma,
            adapted_role,
            energy_half_widths,
            gap_half_widths,
            reported_gap_half_widths,
        )

        adapted = self.metadata.get("adapted") or {}
        scale = self.uncertainty.get("adapted" if adapted.get("kept") == "adapted" else "zero_shot", {})
        n_atoms = batch.n_atoms
        feats = features.numpy().astype(float)
        raw = {
            "heat_per_atom": (self.stats.decode_heat(point[:, 0], n_atoms) / n_atoms).numpy().astype(float),
            "metal_logit": point[:, 1].numpy().astype(float),
            "gap": self.stats.decode_gap(point[:, 2]).numpy().astype(float),
            "n_atoms": n_atoms.numpy().astype(float),
            "features": feats,
        }
        role = adapted_role(adapted)
        if role is not None:
            raw = transform(raw, adapted.get("choice"), role)
        atoms = raw["n_atoms"]
        per = 1.0 if self.names.energy_per_atom else atoms  # public energy = per_atom · per
        energy = raw["heat_per_atom"] * per
        p_metal = 1.0 / (1.0 + np.exp(-np.clip(raw["metal_logit"], -60, 60)))
        gap = raw["gap"]
        if mc is not None:
            energy_std = self.stats.decode_heat(mc[..., 0], n_atoms).std(0).numpy() / atoms * per
            energy_std = energy_std * scale.get("heat_ref", 1.0)
            gap_std = self.stats.decode_gap(mc[..., 2]).std(0).numpy() * scale.get("band_gap", 1.0)
        else:
            energy_std, gap_std = np.full_like(energy, math.nan), np.full_like(gap, math.nan)
        metal = (1.0 - p_metal) < self.nonmetal_cut
        band_gap = np.where(metal, 0.0, gap)
        band_gap_std = np.where(metal, np.sqrt((1 - p_metal) * (gap_std**2 + gap**2)), gap_std)
        sigma = _sigma(self.uncertainty, feats)
        energy_half = energy_half_widths(self.uncertainty, adapted, feats, sigma) * per
        gap_half = gap_half_widths(self.uncertainty, adapted, metal, feats, sigma)
        reported_half = reported_gap_half_widths(self.uncertainty, adapted, metal, feats, sigma)
        e, g = self.names.names
        rows = []
        for i in range(point.shape[0]):
            row: dict[str, Any] = {
                e: float(energy[i]),
                f"{e}_std": float(energy_std[i]),
                f"{e}_lo": _finite(energy[i] - energy_half[i]),
                f"{e}_hi": _finite(energy[i] + energy_half[i]),
                g: float(band_gap[i]),
                f"{g}_std": float(band_gap_std[i]),
                f"{g}_lo": _finite(max(band_gap[i] - reported_half[i], 0.0)),
                f"{g}_hi": _finite(band_gap[i] + reported_half[i]),
                "p_metal": float(p_metal[i]),
                "gap_if_nonmetal": float(gap[i]),
                "gap_lo": _finite(max(gap[i] - gap_half[i], 0.0)),
                "gap_hi": _finite(gap[i] + gap_half[i]),
                "feature_distance": None if sigma is None else float(sigma[i] - 1.0),
            }
            if g != "band_gap":
                row["band_gap"] = row[g]  # the measured-level gap takes this name once it is predicted
            rows.append(row)
        return rows

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
            if not math.isfinite(value) or (role == GAP and value < 0):
                raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
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
        return Predictor(self.maml, {**self.metadata, "adapted": adapted}, None, fast=fast), report

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
        if role is None:
            where = self.path.name if self.path else "this predictor"
            raise CheckpointError(f"{where} predicts {' and '.join(self.names.names)}; it has no target {target!r}")
        return role

    def save(self, path: str | Path) -> Path:
        """Write this predictor (weights incl. adapted ones, metadata) as a checkpoint."""
        state = self.maml.state_dict()
        for name, value in (self.fast or {}).items():
            state[f"model.{name}"] = value.detach()
        return save_checkpoint(path, state, self.metadata)


def _finite(value: float) -> float | None:
    """``value`` as a float, None when it is not finite (no calibrated interval in the checkpoint)."""
    return float(value) if math.isfinite(value) else None


def _unseen_warning(unseen: Sequence[int], identity: bool = True) -> str | None:
    if not unseen:
        return None
    from pymatgen.core.periodic_table import Element

    symbols = ", ".join(Element.from_Z(z).symbol for z in unseen)
    how = "a generic element embedding" if identity else "its element descriptors only"
    return f"element(s) never seen in training: {symbols}; prediction uses {how}"
