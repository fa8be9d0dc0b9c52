"""Meta-train the measured-level gap of a PBE predictor: ``matmeta meta-train recipes/expt_gap.toml``.

1. The measured gaps (``expt_gaps.csv``) are joined to the store's structures (:mod:`matmeta.predict.measured_data`)
   and grouped into families (the recipe's kind; a fixed train / validation / test split of the families).
2. The base checkpoint's PBE network runs once over those structures; its outputs and features are the
   fidelity head's inputs (:func:`matmeta.predict.measured.fidelity_inputs`), fixed from then on.
3. The head is fitted on the pooled training families (the start), then meta-learned with the engine
   across them, each family a task, early-stopping on the validation families.
4. Calibration on the validation families: the measured-level non-metal cut and split-conformal 90 %
   half-widths of the reported gap by predicted class, zero-shot and adapted.
5. The base checkpoint is written again with the head's weights (``measured.*``; the pooled fit before
   meta-learning as ``measured_pooled.*``, the benchmark's fine-tuning start) and a ``measured_gap``
   metadata entry: one file predicts the PBE and the measured gap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import RecipeError
from matmeta.predict.measured import (
    POOLED_PREFIX,
    PREFIX,
    MeasuredTable,
    family_index,
    fidelity_inputs,
    graph_composition,
    loss_fn,
    measured_outputs,
)


@dataclasses.dataclass(frozen=True)
class MeasuredData:
    """The ``[data]`` section: measured gaps, the store of their structures, the family split."""

    csv: str = "expt_gaps/expt_gaps.csv"
    store: Path = Path("out/mp.lmdb")
    family_by: str = "cation"
    min_family_size: int = 15
    val_families: tuple[str, ...] = ()
    test_families: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MeasuredSettings:
    """The ``[maml]`` and ``[episodes]`` sections of the head's meta-training."""

    inner_lr: float = 0.05
    inner_steps: int = 5
    adapt_steps: int | None = 10
    first_order: bool = False
    learn_inner_lr: bool = True
    per_element_lr: bool = True
    adapt: str = "re:^(slope|shift|out\\.)"
    k_support: tuple[int, ...] = (3, 5, 10)
    k_query: int = 10
    hidden: int = 32
    pretrain_steps: int = 500
    pretrain_lr: float = 0.003


def network_table(predictor: Any, store: Any, rows: Any) -> MeasuredTable:
    """Run the PBE network once over the rows with a structure; their fidelity inputs and gaps."""
    from matmeta.predict.data import graph_from_data

    usable = rows.with_structure
    graphs = [graph_from_data(store[int(rows.store_index[i])]) for i in usable]
    return fidelity_table(predictor, graphs, rows.gap[usable], [rows.family[i] for i in usable],
                          [rows.formula[i] for i in usable])  # fmt: skip


def fidelity_table(
    predictor: Any, graphs: list, gaps: np.ndarray, families: list[str], formulas: list[str], chunk: int = 512
) -> MeasuredTable:
    """The fidelity head's inputs of ``graphs`` (one pass of the PBE network) with their measured ``gaps``."""
    from matmeta.models.gnn import collate
    from matmeta.predict.kriging import head_features

    xs, gps, lgs = [], [], []
    nan_y = torch.full((3,), float("nan"))
    predictor.maml.eval()
    with torch.inference_mode():
        for begin in range(0, len(graphs), chunk):
            batch = collate([(*g, nan_y) for g in graphs[begin : begin + chunk]])
            with head_features(predictor.model) as captured:
                point = predictor.maml(*batch.inputs())
            comp = graph_composition(batch.atomic_numbers, batch.n_atoms)
            x, gap_pbe, logit = fidelity_inputs(point, captured["features"], comp, predictor.stats)
            xs.append(x)
            gps.append(gap_pbe)
            lgs.append(logit)
    gap = torch.as_tensor(np.asarray(gaps, dtype=np.float32))
    return MeasuredTable(torch.cat(xs), torch.cat(gps), torch.cat(lgs), gap, list(families), list(formulas))


class MeasuredEpisodes:
    """Episode source of measured families: same-shaped tensor tasks (the engine vmaps them)."""

    def __init__(self, table: MeasuredTable, families: Sequence[str], ks: Sequence[int], k_query: int) -> None:
        members: dict[str, list[int]] = {}
        for i, family in enumerate(table.families):
            if family in set(families):
                members.setdefault(family, []).append(i)
        self.table, self.k_query = table, int(k_query)
        self.by_k = {int(k): [np.array(m) for m in members.values() if len(m) >= k + k_query] for k in ks}
        self.by_k = {k: fams for k, fams in self.by_k.items() if fams}
        if not self.by_k:
            raise RecipeError(f"no measured family has {min(ks)} + {k_query} members")

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
        """``n_tasks`` tasks of one support size (one k per meta-batch: the tasks stack)."""
        ks = sorted(self.by_k)
        k = ks[int(torch.randint(len(ks), (1,), generator=generator))]
        tasks = []
        for _ in range(n_tasks):
            family = self.by_k[k][int(torch.randint(len(self.by_k[k]), (1,), generator=generator))]
            order = family[torch.randperm(len(family), generator=generator).numpy()]
            tasks.append((self.table.rows(order[:k]), self.table.rows(order[k : k + self.k_query])))
        return tasks


def pretrain(maml: Any, table: MeasuredTable, train: np.ndarray, steps: int, lr: float, seed: int) -> None:
    """Fit the head on the pooled training rows (full batch, Adam): the start of meta-training."""
    torch.manual_seed(seed)
    batch = table.rows(train)
    with torch.no_grad():  # the linear map first: least squares of the measured on the PBE gap (non-metals)
        nonmetal = batch[3] > 0
        design = torch.stack([batch[1][nonmetal], torch.ones(int(nonmetal.sum()))], dim=1)
        solution = torch.linalg.lstsq(design, batch[3][nonmetal][:, None]).solution[:, 0]
        maml.model.slope.fill_(float(solution[0]))
        maml.model.shift.fill_(float(solution[1]))
    optimizer = torch.optim.Adam(maml.model.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(maml.model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def meta_train_measured(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Train the measured-level head of the recipe's base checkpoint; returns the checkpoint written."""
    from matmeta.checkpoint import load_checkpoint, save_checkpoint
    from matmeta.console import console
    from matmeta.meta.maml import MAML
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.models.fidelity import FidelityConfig, FidelityHead
    from matmeta.predict.measured_calibrate import calibrate_measured
    from matmeta.predict.measured_data import read_measured
    from matmeta.predict.predictor import Predictor
    from matmeta.recipes import config_from_dict, config_to_dict
    from matmeta.store.datasets import shared_data_dir
    from matmeta.store.reader import GraphStore

    section = recipe.get("meta_train", {})
    base, out = Path(section["base_checkpoint"]), Path(out or section.get("out") or section["base_checkpoint"])
    work = Path(section.get("work_dir", "out/measured"))
    work.mkdir(parents=True, exist_ok=True)
    data = config_from_dict(MeasuredData, recipe.get("data"), f"{recipe_path} [data]")
    settings = config_from_dict(MeasuredSettings, recipe.get("maml"), f"{recipe_path} [maml]")
    trainer_cfg = config_from_dict(TrainerConfig, recipe.get("trainer"), f"{recipe_path} [trainer]")
    if steps is not None:
        trainer_cfg = dataclasses.replace(trainer_cfg, outer_steps=int(steps))
    trainer_cfg = dataclasses.replace(trainer_cfg, log_path=trainer_cfg.log_path or work / "meta_train.jsonl")
    predictor = Predictor.load(base)
    store = GraphStore(data.store)
    rows = read_measured(shared_data_dir() / data.csv, store, data.family_by)
    table = network_table(predictor, store, rows)
    train_f = sorted({f for f in table.families if f} - set(data.val_families) - set(data.test_families))
    console.print(f"{len(table)} measured gaps with a structure; {len(train_f)} {data.family_by} training families")
    config = FidelityConfig(in_features=int(table.x.shape[1]), hidden=settings.hidden)
    maml = MAML(FidelityHead(config), inner_lr=settings.inner_lr, inner_steps=settings.inner_steps,
                first_order=settings.first_order, learn_inner_lr=settings.learn_inner_lr,
                per_element_lr=settings.per_element_lr, adapt=settings.adapt)  # fmt: skip
    pretrain(maml, table, family_index(table, train_f), settings.pretrain_steps, settings.pretrain_lr,
             trainer_cfg.seed)  # fmt: skip
    pooled = {k: v.detach().clone() for k, v in maml.model.state_dict().items()}  # the fine-tuning baseline's start
    train_source = MeasuredEpisodes(table, train_f, settings.k_support, settings.k_query)
    val_source = MeasuredEpisodes(table, data.val_families, settings.k_support, settings.k_query)
    trainer = MetaTrainer(maml, loss_fn, train_source, trainer_cfg, val_source, work / "meta_train.ckpt")
    result = trainer.fit()
    if settings.adapt_steps is not None:
        maml.inner_steps = int(settings.adapt_steps)
    maml.eval()
    entry = {
        "model_config": config_to_dict(config),
        "maml": config_to_dict(settings),
        "families": {
            "by": data.family_by,
            "train": train_f,
            "val": list(data.val_families),
            "test": list(data.test_families),
        },  # fmt: skip
        "training": {"steps": result.steps, "best_step": result.best_step, "best_val_loss": result.best_val_loss},
        "recipe": recipe,
    }
    entry["uncertainty"] = calibrate_measured(maml, table, data.val_families, settings, trainer_cfg.seed)
    tensors, metadata = load_checkpoint(base)
    tensors = {k: v for k, v in tensors.items() if not k.startswith((PREFIX, POOLED_PREFIX))}
    tensors.update({PREFIX + k: v.detach() for k, v in maml.state_dict().items()})
    tensors.update({POOLED_PREFIX + k: v for k, v in pooled.items()})
    save_checkpoint(out, tensors, {**metadata, "measured_gap": entry})
    console.print(f"measured-level gap: best validation loss {result.best_val_loss} at step {result.best_step}; {out}")
    return out


def zero_shot(maml: Any, table: MeasuredTable, indices: np.ndarray) -> np.ndarray:
    """``[P(metal), gap]`` of the rows at ``indices`` with the meta-learned start."""
    return measured_outputs(maml, table.inputs(indices))
