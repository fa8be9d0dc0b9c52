"""Meta-training of the family decoder: prototype families as tasks (``[meta_train] app = "family_generator"``).

An episode is one family: the inner loop adapts the decoder's head to ``k_support`` members of the family
shown *without* their gaps (null condition: a user's example CIFs carry none), the outer loss is the
conditional negative log-likelihood of ``k_query`` other members under their gap condition (PBE or
measured-level, one drawn per example; ``null_prob`` of them unconditioned). ``zero_shot_prob`` of the
episodes skip adaptation (support weight 0), so the start itself knows what slots like.
Families follow the predictor's leave-family-out split (``recipes/mp.toml``): the decoder never sees a
validation or test family while it trains, nor does the predictor that judges it.

One job: episodes, the loss, the recipe -> checkpoint path, and loading the checkpoint back.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.design.family_table import Family, FamilyTable, load_family_table
from matmeta.models.site_decoder import SiteDecoder, SiteDecoderConfig, condition, nll_per_example

MAX_SLOTS = 5
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "SiteDecoder-MP-2026-12-08-Families.ckpt"


@dataclass(frozen=True)
class FamilyTrainConfig:
    """The ``[meta_train]`` section of a family-generator recipe (besides ``app``).

    Attributes:
        predictor_recipe: the predictor recipe whose store and family split are used.
        table_cache: where the family table is cached.
        k_support, k_query: members per episode for the inner loop / the outer loss.
        null_prob: condition dropout on the query members.
        zero_shot_prob: share of episodes without adaptation.
        inner_lr, inner_steps, first_order: the inner loop (Meta-SGD rates start at ``inner_lr``).
        checkpoint: output path (relative to the repository root).
    """

    predictor_recipe: Path = Path("recipes/mp.toml")
    table_cache: Path = Path("out/design/family_table.json")
    k_support: int = 5
    k_query: int = 16
    null_prob: float = 0.2
    zero_shot_prob: float = 0.3
    inner_lr: float = 0.1
    inner_steps: int = 3
    first_order: bool = False
    checkpoint: Path = DEFAULT_CHECKPOINT


class Vocabulary:
    """Atomic number <-> decoder index."""

    def __init__(self, elements: list[int]) -> None:
        self.elements = list(elements)
        self.index = {z: i for i, z in enumerate(self.elements)}

    def encode(self, slots: tuple[int, ...]) -> list[int]:
        """Decoder indices (-1: outside the vocabulary)."""
        return [self.index.get(z, -1) for z in slots]


def padded_slots(family: Family) -> Tensor:
    """Shapes: (MAX_SLOTS, SLOT_FEATURES), zero rows past the family's slots."""
    features = torch.zeros(MAX_SLOTS, family.slot_features().shape[1])
    features[: family.n_slots] = torch.as_tensor(family.slot_features())
    return features


def encode_members(
    family: Family,
    members: list[Any],
    vocab: Vocabulary,
    pbe: np.ndarray,
    null: np.ndarray,
    gap_scale_ev: float,
    weight: float = 1.0,
) -> dict[str, Tensor]:
    """One batch of members under their gap condition (``pbe``: 1 = the PBE label, 0 = measured-level)."""
    targets = torch.full((len(members), MAX_SLOTS), -1, dtype=torch.long)
    for row, member in enumerate(members):
        targets[row, : family.n_slots] = torch.as_tensor(vocab.encode(member.slots))
    gaps = np.array([m.gap_pbe if p else m.gap_measured for m, p in zip(members, pbe, strict=True)])
    gaps = np.nan_to_num(gaps)
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32))  # noqa: E731
    cond = condition(t(gaps), t(gaps > 0), t(pbe), t(null), gap_scale_ev)
    slots = padded_slots(family).unsqueeze(0).expand(len(members), -1, -1).contiguous()
    return {"slots": slots, "cond": cond, "targets": targets, "weight": torch.full((len(members),), float(weight))}


def loss_fn(forward: Any, batch: dict[str, Tensor]) -> Tensor:
    """Weighted mean negative log-likelihood per slot (all-zero weights: a zero-shot episode's no-op support)."""
    nll = nll_per_example(forward(batch["slots"], batch["cond"], batch["targets"]), batch["targets"])
    slots = (batch["targets"] >= 0).sum(dim=1).to(nll.dtype)
    return (batch["weight"] * nll).sum() / (batch["weight"] * slots).sum().clamp_min(1.0)


class FamilyEpisodes:
    """Episodes drawn from the named families (every randomness from the engine's generator)."""

    def __init__(
        self,
        table: FamilyTable,
        names: list[str],
        vocab: Vocabulary,
        config: FamilyTrainConfig,
        gap_scale_ev: float,
        train: bool = True,
    ) -> None:
        need = config.k_support + config.k_query
        self.families = [table.families[n] for n in names if len(table.families[n].members) >= need]
        self.vocab, self.config, self.gap_scale_ev, self.train = vocab, config, gap_scale_ev, train

    def sample(self, n_tasks: int, generator: torch.Generator) -> list[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``n_tasks`` (support, query) episodes of families drawn with replacement."""
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        cfg = self.config
        tasks = []
        for f in rng.choice(len(self.families), size=n_tasks, replace=True):
            family = self.families[f]
            order = rng.permutation(len(family.members))
            support = [family.members[i] for i in order[: cfg.k_support]]
            query = [family.members[i] for i in order[cfg.k_support : cfg.k_support + cfg.k_query]]
            zero_shot = self.train and rng.random() < cfg.zero_shot_prob
            s = encode_members(
                family, support, self.vocab, np.zeros(len(support)), np.ones(len(support)), self.gap_scale_ev,
                weight=0.0 if zero_shot else 1.0,
            )  # fmt: skip
            pbe = (rng.random(len(query)) < 0.5).astype(float)
            null = (rng.random(len(query)) < (cfg.null_prob if self.train else 0.0)).astype(float)
            tasks.append((s, encode_members(family, query, self.vocab, pbe, null, self.gap_scale_ev)))
        return tasks


def predictor_split(recipe: Path) -> tuple[Path, list[str], list[str]]:
    """Store, validation and test families of a predictor recipe."""
    data = tomllib.loads(Path(recipe).read_text())["data"]
    return Path(data["store"]), list(data["val_families"]), list(data["test_families"])


def family_table_for(config: FamilyTrainConfig, root: Path, predictor: Any = None) -> FamilyTable:
    """The family table of the predictor recipe's store (built and labelled once, then cached)."""
    store, val, test = predictor_split(root / config.predictor_recipe)
    if predictor is None and not (root / config.table_cache).exists():
        from matmeta.predict.predictor import Predictor

        predictor = Predictor.load()
    return load_family_table(root / store, val, test, root / config.table_cache, predictor)


def meta_train_from_recipe(recipe: dict, recipe_path: Path, out: Path | None = None, steps: int | None = None) -> Path:
    """Meta-train the family decoder; returns the checkpoint path."""
    from matmeta import __version__
    from matmeta.meta.maml import MAML
    from matmeta.meta.trainer import MetaTrainer, TrainerConfig
    from matmeta.recipes import config_from_dict, config_to_dict

    root = Path(recipe_path).resolve().parent.parent
    section = {k: v for k, v in recipe.get("meta_train", {}).items() if k != "app"}
    cfg = config_from_dict(FamilyTrainConfig, section, f"{recipe_path}[meta_train]")
    trainer_section = dict(recipe.get("trainer", {}))
    if steps is not None:
        trainer_section["outer_steps"] = int(steps)
    if trainer_section.get("log_path"):
        trainer_section["log_path"] = str(root / trainer_section["log_path"])
    tcfg = config_from_dict(TrainerConfig, trainer_section, f"{recipe_path}[trainer]")
    table = family_table_for(cfg, root)
    vocab = Vocabulary(table.elements())
    mcfg = config_from_dict(SiteDecoderConfig, {**recipe.get("model", {}), "elements": vocab.elements}, "[model]")
    torch.manual_seed(tcfg.seed)
    model = SiteDecoder(mcfg)
    maml = MAML(model, cfg.inner_lr, cfg.inner_steps, first_order=cfg.first_order, learn_inner_lr=True, adapt="head")
    train_src = FamilyEpisodes(table, table.split["train"], vocab, cfg, mcfg.gap_scale_ev)
    val_src = FamilyEpisodes(table, table.split["val"], vocab, cfg, mcfg.gap_scale_ev, train=False)
    path = Path(out) if out is not None else (cfg.checkpoint if cfg.checkpoint.is_absolute() else root / cfg.checkpoint)
    metadata = {
        "kind": "family_generator",
        "model_class": "SiteDecoder",
        "model_config": config_to_dict(mcfg),
        "train_config": config_to_dict(cfg),
        "families": dict(table.split),
        "recipe": recipe,
        "matmeta_version": __version__,
    }
    trainer = MetaTrainer(maml, loss_fn, train_src, tcfg, val_source=val_src, checkpoint_path=path, metadata=metadata)
    trainer.fit()
    return path
