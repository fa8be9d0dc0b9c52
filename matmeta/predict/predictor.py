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

import copy
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
    TARGETS,
    UNITS,
    TargetStats,
    graph_from_structure,
    loss_fn,
    map_unknown,
)

DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "CrystalGNN-Perovskites-2026-11-26-HeatGap.ckpt"
MODEL_CLASS = "CrystalGNN"
__all__ = ["Predictor", "FinetuneReport"]


@dataclasses.dataclass
class FinetuneReport:
    """What :meth:`Predictor.finetune` did.

    Attributes:
        target: ``heat_ref`` or ``band_gap``.
        unit: unit of the target.
        n_support: labelled structures used.
        steps: inner steps.
        loo_mae_adapted: leave-one-out MAE with adaptation (NaN for one structure).
        loo_mae_unadapted: MAE of the unadapted model on the same structures.
        kept: ``"adapted"`` or ``"unadapted"``.
        loo_predictions: the leave-one-out predictions of the adapted model.
    """

    target: str
    unit: str
    n_support: int
    steps: int
    loo_mae_adapted: float
    loo_mae_unadapted: float
    kept: str
    loo_predictions: list[float]

    def message(self) -> str:
        """One human-readable summary line."""
        base = (
            f"leave-one-out MAE on {self.n_support} support structures: adapted {self.loo_mae_adapted:.4g}, "
            f"unadapted {self.loo_mae_unadapted:.4g} {self.unit}"
        )
        if self.kept == "unadapted":
            return base + "; adaptation made it worse (or diverged), so the unadapted weights are kept"
        if math.isnan(self.loo_mae_adapted):
            return base + "; one structure: no leave-one-out check possible, adapted weights kept"
        return base + "; adapted weights kept"


class Predictor:
    """A loaded predictor checkpoint: the model, its graph settings, target statistics and engine.

    Use :meth:`load`; the constructor takes already-checked parts.
    """

    def __init__(self, maml: MAML, metadata: dict[str, Any], path: Path | None = None) -> None:
        from matmeta.graphs import GraphConfig

        self.maml = maml
        self.metadata = metadata
        self.path = path
        self.stats = TargetStats(**metadata["targets"]["stats"])
        self.graph_config = GraphConfig(**metadata["graph_config"])
        self.elements_seen = {int(z) for z in metadata["elements_seen"]}
        self.uncertainty = dict(metadata.get("uncertainty", {}))

    @property
    def model(self) -> CrystalGNN:
        """The network."""
        return self.maml.model  # type: ignore[return-value]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Predictor:
        """Read a predictor checkpoint (None: the shipped default).

        Raises:
            CheckpointError: missing, corrupt, pickled, another kind or model, or weights that do
                not match the stored configuration.
        """
        from matmeta.graphs import GraphConfig
        from matmeta.recipes import config_from_dict

        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        tensors, metadata = load_checkpoint(path)
        expect(metadata, path, kind="predictor")
        expect(metadata, path, model_class=MODEL_CLASS)
        for key in ("model_config", "graph_config", "targets", "maml", "elements_seen"):
            if key not in metadata:
                raise CheckpointError(f"{path}: predictor checkpoint without {key!r} in its metadata")
        if list(metadata["targets"].get("names", [])) != list(TARGETS):
            raise CheckpointError(
                f"{path}: checkpoint predicts {metadata['targets'].get('names')}, this matmeta needs {list(TARGETS)}"
            )
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
        for structure in structures:
            z, edge_index, edge_dist = graph_from_structure(structure, self.graph_config)
            unseen = sorted({int(a) for a in z.tolist()} - self.elements_seen)
            warnings.append(_unseen_warning(unseen))
            graphs.append((map_unknown(z, self.elements_seen), edge_index, edge_dist))
        return graphs, warnings

    # ------------------------------------------------------------------ predict
    def predict_graphs(
        self,
        graphs: Sequence[tuple[Tensor, Tensor, Tensor]],
        mc_samples: int | None = None,
        chunk: int = 512,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        """Predictions for ready graphs (see :meth:`predict_structures` for the keys)."""
        samples = int(mc_samples if mc_samples is not None else self.uncertainty.get("mc_samples", 32))
        nan_y = torch.full((3,), math.nan)
        rows: list[dict[str, float]] = []
        self.maml.eval()
        with torch.inference_mode():
            for begin in range(0, len(graphs), chunk):
                batch = collate([(*g, nan_y) for g in graphs[begin : begin + chunk]])
                point = self.model(*batch.inputs())
                mc = self.model(*batch.inputs(), mc_samples=samples, mc_seed=seed) if samples > 1 else None
                rows.extend(self._rows(point, mc, batch))
        return rows

    def predict_structures(self, structures: Sequence[Any], mc_samples: int | None = None) -> list[dict[str, Any]]:
        """Predict every structure.

        Returns:
            One dict per structure: ``heat_ref`` and ``heat_ref_std`` (eV/cell), ``band_gap`` and
            ``band_gap_std`` (eV; 0 when predicted metallic), ``p_metal``, ``gap_if_nonmetal`` (eV)
            and ``warning`` (str or None, e.g. for elements never seen in training).
        """
        graphs, warnings = self.graphs(structures)
        rows = self.predict_graphs(graphs, mc_samples=mc_samples)
        return [{**row, "warning": warning} for row, warning in zip(rows, warnings, strict=True)]

    def _rows(self, point: Tensor, mc: Tensor | None, batch: GraphBatch) -> list[dict[str, float]]:
        """Decode model outputs (point (G, 3), MC samples (S, G, 3)) into rows in target units."""
        adapted = (self.metadata.get("adapted") or {}).get("kept") == "adapted"
        scale = self.uncertainty.get("adapted" if adapted else "zero_shot", {})
        heat = self.stats.decode_heat(point[:, 0], batch.n_atoms)
        p_metal = torch.sigmoid(point[:, 1])
        gap = self.stats.decode_gap(point[:, 2])
        if mc is not None:
            heat_std = self.stats.decode_heat(mc[..., 0], batch.n_atoms).std(0) * scale.get("heat_ref", 1.0)
            gap_std = self.stats.decode_gap(mc[..., 2]).std(0) * scale.get("band_gap", 1.0)
        else:
            heat_std, gap_std = torch.full_like(heat, math.nan), torch.full_like(gap, math.nan)
        metal = p_metal >= 0.5
        band_gap = torch.where(metal, 0.0, gap)
        mixture_std = torch.sqrt((1 - p_metal) * (gap_std**2 + gap**2))
        band_gap_std = torch.where(metal, mixture_std, gap_std)
        return [
            {
                "heat_ref": float(heat[i]),
                "heat_ref_std": float(heat_std[i]),
                "band_gap": float(band_gap[i]),
                "band_gap_std": float(band_gap_std[i]),
                "p_metal": float(p_metal[i]),
                "gap_if_nonmetal": float(gap[i]),
            }
            for i in range(point.shape[0])
        ]

    # ------------------------------------------------------------------ finetune
    def target_values(self, outputs: Tensor, batch: GraphBatch, target: str) -> Tensor:
        """Model outputs (G, 3) → predictions of ``target`` in its unit, shape (G,)."""
        if target == "heat_ref":
            return self.stats.decode_heat(outputs[:, 0], batch.n_atoms)
        metal = torch.sigmoid(outputs[:, 1]) >= 0.5
        return torch.where(metal, 0.0, self.stats.decode_gap(outputs[:, 2]))

    def finetune(
        self,
        structures: Sequence[Any],
        values: Sequence[float],
        target: str,
        steps: int | None = None,
        names: Sequence[str] | None = None,
    ) -> tuple[Predictor, FinetuneReport]:
        """Adapt to labelled structures of one family (the engine's inner loop; fast weights only).

        Args:
            structures: 1–50 pymatgen structures.
            values: the measured ``target`` of each, in its unit (eV/cell or eV).
            target: ``heat_ref`` or ``band_gap``.
            steps: inner steps (default: the meta-learned number).
            names: labels of the structures for error messages.

        Returns:
            The adapted predictor (or an unchanged copy when adaptation hurt) and the report.

        Raises:
            CheckpointError: the checkpoint does not predict ``target``.
            MatmetaInputError: no structures, or a non-finite / negative value.
        """
        if target not in TARGETS:
            raise CheckpointError(
                f"{self.path}: checkpoint predicts {', '.join(TARGETS)}; it cannot be fine-tuned on {target!r}"
            )
        names = list(names) if names is not None else [f"structure {i + 1}" for i in range(len(structures))]
        values_arr = np.asarray(values, dtype=float)
        if len(structures) == 0 or len(structures) != len(values_arr):
            raise MatmetaInputError(f"support set: need ≥ 1 structure with one value each, got {len(structures)}")
        for name, value in zip(names, values_arr, strict=True):
            if not math.isfinite(value) or (target == "band_gap" and value < 0):
                raise MatmetaInputError(f"{name}: {target} value {value} is not a valid measurement")
        items = self.support_items(structures, values_arr, target)
        steps = self.maml.inner_steps if steps is None else int(steps)
        self.maml.eval()
        unadapted = self._predict_target(collate(items), None, target)
        loo = np.full(len(items), np.nan)
        if len(items) > 1:
            for i in range(len(items)):
                fast = self.maml.adapt(collate(items[:i] + items[i + 1 :]), loss_fn, steps=steps)
                loo[i] = self._predict_target(collate([items[i]]), fast, target)[0]
        mae_unadapted = float(np.mean(np.abs(unadapted - values_arr)))
        mae_adapted = float(np.mean(np.abs(loo - values_arr))) if len(items) > 1 else math.nan
        keep = len(items) == 1 or (math.isfinite(mae_adapted) and mae_adapted <= mae_unadapted)
        report = FinetuneReport(
            target, UNITS[target], len(items), steps, mae_adapted, mae_unadapted,
            "adapted" if keep else "unadapted", [float(v) for v in loo],
        )  # fmt: skip
        maml = copy.deepcopy(self.maml)
        if keep:
            fast = self.maml.adapt(collate(items), loss_fn, steps=steps)
            if not all(torch.isfinite(v).all() for v in fast.values()):
                keep, report.kept = False, "unadapted"
        if keep:
            with torch.no_grad():
                params = dict(maml.model.named_parameters())
                for name, value in fast.items():
                    params[name].copy_(value)
        metadata = {
            **self.metadata,
            "adapted": {
                "target": target,
                "n_support": len(items),
                "steps": steps,
                "kept": report.kept,
                "loo_mae_adapted": None if math.isnan(mae_adapted) else mae_adapted,
                "loo_mae_unadapted": mae_unadapted,
                "base_checkpoint": str(self.path.name if self.path else None),
            },
        }
        maml.eval()
        return Predictor(maml, metadata, None), report

    def support_items(
        self, structures: Sequence[Any], values: Sequence[float], target: str
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Labelled structures as items for :func:`collate` / :func:`per_example_loss` (normalised targets).

        Shapes:
            each item: atomic_numbers (n,), edge_index (2, e), edge_dist (e,), y (3,).
        """
        graphs, _ = self.graphs(structures)
        n_atoms = np.array([g[0].shape[0] for g in graphs], dtype=float)
        nan = np.full(len(graphs), np.nan)
        values_arr = np.asarray(values, dtype=float)
        heat, gap = (values_arr, nan) if target == "heat_ref" else (nan, values_arr)
        y = self.stats.encode(heat, gap, n_atoms)
        return [(*g, y[i]) for i, g in enumerate(graphs)]

    def _predict_target(self, batch: GraphBatch, fast: dict[str, Tensor] | None, target: str) -> np.ndarray:
        with torch.inference_mode():
            outputs = self.maml(*batch.inputs(), params=fast)
            return self.target_values(outputs, batch, target).numpy().astype(float)

    def save(self, path: str | Path) -> Path:
        """Write this predictor (weights incl. adapted ones, metadata) as a checkpoint."""
        return save_checkpoint(path, self.maml.state_dict(), self.metadata)


def _unseen_warning(unseen: Sequence[int]) -> str | None:
    if not unseen:
        return None
    from pymatgen.core.periodic_table import Element

    symbols = ", ".join(Element.from_Z(z).symbol for z in unseen)
    return f"element(s) never seen in training: {symbols}; prediction uses a generic element embedding"
