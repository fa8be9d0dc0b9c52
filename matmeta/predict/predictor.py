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
from matmeta.errors import CheckpointError
from matmeta.meta.maml import MAML
from matmeta.models.gnn import CrystalGNN, GNNConfig, GraphBatch, collate
from matmeta.predict.config import MAMLSettings, build_maml
from matmeta.predict.data import (
    ENERGY,
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
    "mp-robust": CHECKPOINT_DIR / "CrystalGNN-MP-robust-2026-12-07-PBE.ckpt",
}
DEFAULT_CHECKPOINT = SHIPPED["mp"]


def resolve_model(path: str | Path | None) -> Path:
    """A checkpoint path from ``--model``: None → the default, a shipped name (a key of :data:`SHIPPED`) → its file.

    A file of that name in the working folder wins over the shipped name.
    """
    if path is None:
        return DEFAULT_CHECKPOINT
    if str(path) in SHIPPED and not Path(path).exists():
        return SHIPPED[str(path)]
    return Path(path)


def build_head(entry: dict[str, Any]) -> Any:
    """The engine-wrapped fidelity head described by a checkpoint's ``measured_gap`` entry (untrained weights)."""
    from matmeta.meta.maml import MAML
    from matmeta.models.fidelity import FidelityConfig, FidelityHead
    from matmeta.recipes import config_from_dict

    settings = entry["maml"]
    maml = MAML(
        FidelityHead(config_from_dict(FidelityConfig, entry["model_config"], "measured_gap model_config")),
        inner_lr=float(settings["inner_lr"]),
        inner_steps=int(settings.get("adapt_steps") or settings["inner_steps"]),
        first_order=bool(settings.get("first_order", False)),
        learn_inner_lr=bool(settings.get("learn_inner_lr", True)),
        per_element_lr=bool(settings.get("per_element_lr", False)),
        adapt=str(settings.get("adapt", "all")),
    )
    maml.eval()
    return maml


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
        names: TargetNames | None = None,
        stats: TargetStats | None = None,
    ) -> None:
        from matmeta.graphs import GraphConfig

        self.maml = maml
        self.fast = fast  # adapted weights by name (the engine's fast weights); None: the checkpoint's own
        self.measured = measured  # the measured-level gap head (engine-wrapped), or None
        self.measured_fast = measured_fast  # its adapted weights after a finetune on measured gaps
        self.metadata = metadata
        self.path = path
        self.stats = stats if stats is not None else TargetStats(**metadata["targets"]["stats"])
        self.names = names if names is not None else TargetNames.from_metadata(metadata["targets"])
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
            names = TargetNames.from_metadata(metadata["targets"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: checkpoint predicts {metadata['targets'].get('names')}: {exc}") from None
        try:
            stats = TargetStats(**metadata["targets"]["stats"])
            model_config = config_from_dict(GNNConfig, metadata["model_config"], f"{path}: model_config")
            settings = config_from_dict(MAMLSettings, metadata["maml"], f"{path}: maml")
            GraphConfig(**metadata["graph_config"])
        except Exception as exc:  # RecipeError, TypeError, ValueError: a config this code cannot build
            raise CheckpointError(f"{path}: unusable predictor configuration ({exc})") from None
        if abs(model_config.cutoff_angstrom - float(metadata["graph_config"]["cutoff_angstrom"])) > 1e-9:
            raise CheckpointError(f"{path}: model cutoff differs from the graph cutoff it was trained with")
        maml = build_maml(model_config, settings, inference=True)
        from matmeta.predict.measured import POOLED_PREFIX, PREFIX

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
        return cls(maml, metadata, path, measured=measured, names=names, stats=stats)

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
        identity = self.model.config.node_features == "embedding"
        unseen = sorted({int(a) for a in z.tolist()} - self.elements_seen)
        graph = (map_unknown(z, self.elements_seen) if identity else z, edge_index, edge_dist)
        if not unseen:
            return graph, None
        from matmeta.predict.calibration import unseen_warning

        return graph, unseen_warning(unseen, identity)

    def out_of_domain(self, structure: Any, row: dict[str, Any] | None = None) -> str | None:
        """Why ``structure`` lies outside the training data, or None (:func:`.calibration.out_of_domain`)."""
        from matmeta.predict.calibration import out_of_domain

        return out_of_domain(self, structure, row)

    # ------------------------------------------------------------------ predict
    def predict_rows(
        self,
        graphs: Sequence[tuple[Tensor, Tensor, Tensor]],
        structures: Sequence[Any] | None = None,
        mc_samples: int | None = None,
        chunk: int = 512,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """Predictions for ready graphs (see :meth:`predict_structures` for the keys): one network pass per chunk.

        The point and the MC-dropout samples come from one pass of the graph part, with the composition features
        computed once and given to both the network and the measured-level head; :func:`calibrated_rows` then
        applies all of the checkpoint's calibration. With ``structures`` (one per graph) the rows also get the
        new-family corrections and ``out_of_domain``.
        """
        from matmeta.models.gnn import composition_inputs, head_features
        from matmeta.predict.calibration import calibrated_rows

        samples = int(mc_samples if mc_samples is not None else self.uncertainty.get("mc_samples", 32))
        config = self.maml.model.config
        composition = self.measured is not None or config.node_features != "embedding"
        composition = composition or config.composition_features or config.open_shell_metal_offset != 0
        nan_y = torch.full((3,), math.nan)
        rows: list[dict[str, Any]] = []
        self.maml.eval()
        with torch.inference_mode():
            for begin in range(0, len(graphs), chunk):
                batch = collate([(*g, nan_y) for g in graphs[begin : begin + chunk]])
                if composition:  # once, for the network and the measured-level head (an embedding-only model has 0s)
                    atom, graph = composition_inputs(batch.atomic_numbers, batch.batch, batch.num_graphs)
                    batch = dataclasses.replace(batch, atom_features=atom, graph_features=graph)
                with head_features(self.maml.model) as captured:
                    if samples > 1:  # the point and the MC samples from one pass of the graph part
                        both = self.maml(*batch.inputs(), params=self.fast, mc_samples=samples, mc_seed=seed,
                                         include_point=True, **batch.extra())  # fmt: skip
                        point, mc = both[0], both[1:]
                    else:
                        point, mc = self.maml(*batch.inputs(), params=self.fast, **batch.extra()), None
                part = None if structures is None else structures[begin : begin + chunk]
                rows.extend(calibrated_rows(self, point, mc, batch, captured["features"], part))
        return rows

    def predict_graphs(
        self, graphs: Sequence[tuple[Tensor, Tensor, Tensor]], mc_samples: int | None = None
    ) -> list[dict[str, Any]]:
        """Rows for graphs without their structures (no new-family corrections, no ``out_of_domain``)."""
        return self.predict_rows(graphs, None, mc_samples)

    def predict_structures(self, structures: Sequence[Any], mc_samples: int | None = None) -> list[dict[str, Any]]:
        """Predict every structure.

        Returns:
            One dict per structure, keyed by the checkpoint's target names (see
            :func:`matmeta.predict.calibration.calibrated_rows`; for the perovskite checkpoint): ``heat_ref`` and
            ``heat_ref_std`` (eV/cell), ``band_gap`` and ``band_gap_std`` (eV; 0 when predicted metallic),
            ``p_metal``, ``gap_if_nonmetal`` (eV; with ``gap_shift`` eV added for a B site never seen in
            training), the 90% intervals ``heat_ref_lo``/``heat_ref_hi`` and ``gap_lo``/``gap_hi`` (gap if
            non-metal), ``out_of_domain`` (str or None) and ``warning`` (str or None, e.g. for elements never
            seen in training).
        """
        graphs, warnings = self.graphs(structures)
        rows = self.predict_rows(graphs, structures, mc_samples=mc_samples)
        return [{**row, "warning": warning} for row, warning in zip(rows, warnings, strict=True)]

    @property
    def new_family_cut(self) -> float:
        """The non-metal cut on the recalibrated P of a new B site: the same calls as :attr:`nonmetal_cut` on raw P."""
        from matmeta.predict.calibration import new_family_cut

        return new_family_cut(self.uncertainty)

    @property
    def nonmetal_cut(self) -> float:
        """P(non-metal) at or above which a structure is called a non-metal (chosen on the calibration families)."""
        from matmeta.predict.calibration import nonmetal_cut

        return nonmetal_cut(self.uncertainty)

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
        robust: bool = False,
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
            robust: adapt with the robust loss (drift under 0.05 Å PGD displacements penalised,
                :mod:`matmeta.predict.robust`); best from the robust start (``--model mp-robust``).

        Returns:
            The adapted predictor (a copy; this one is unchanged) and the report.

        Raises:
            CheckpointError: the checkpoint does not predict ``target``.
            MatmetaInputError: no structures, or a non-finite / negative value.
        """
        from matmeta.predict.finetune import finetune_predictor

        return finetune_predictor(self, structures, values, target, steps, names, robust)

    @property
    def measured_cut(self) -> float:
        """P(non-metal) at or above which the measured level calls a non-metal (its validation families' cut)."""
        from matmeta.predict.calibration import measured_cut

        return measured_cut(self.metadata)

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
