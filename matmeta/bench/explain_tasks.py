"""The episodes the influence benchmark (``bench/explain.py``) measures: sine, JMAK and predictor tasks.

Each task builds, from the ``[explain]`` recipe section (``ExplainBenchConfig``), episodes that hold
what :func:`matmeta.explain.explain_adaptation` needs (a meta-learned model, support items, a
collate function, a per-example loss and a query) plus a copy with one label corrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from matmeta.recipes import config_from_dict


@dataclass
class Episode:
    """Everything :func:`matmeta.explain.explain_adaptation` needs for one episode, plus a corrupted copy."""

    maml: Any
    items: list[Any]
    collate: Callable[[Sequence[Any]], Any]
    per_example_loss: Callable[[Any, Any], torch.Tensor]
    query_fn: Callable[[Any], torch.Tensor]
    corrupted_items: list[Any]
    corrupted_index: int
    batchable: bool = True  # an item's loss does not depend on the other items (vmapped LOO is exact)


class SineTask:
    """Sinusoid families and a MAML (MLP 1-40-40-1, 5 inner steps) meta-trained on them here."""

    name = "sine"

    def __init__(self, cfg: Any) -> None:
        from matmeta.bench.sinusoid import SinusoidTasks, mlp, mse_loss
        from matmeta.meta.maml import MAML

        torch.manual_seed(cfg.seed)
        self.maml = MAML(mlp(40, 2), inner_lr=0.01, inner_steps=5)
        source = SinusoidTasks(k_support=10, k_query=10)
        optimizer = torch.optim.Adam(self.maml.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.sine_meta_steps):
            loss = self.maml.meta_loss(source.sample(16, generator), mse_loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.cfg = cfg
        self.note = f"MLP 1-40-40-1, {cfg.sine_meta_steps} meta-steps here"

    def sizes(self) -> tuple[int, ...]:
        """Support sizes."""
        return self.cfg.sine_k

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """A fresh sinusoid (never seen in meta-training: drawn from another generator)."""
        from matmeta.bench.sinusoid import SinusoidTasks, per_example_loss

        (xs, ys), (xq, _) = SinusoidTasks(k_support=k, k_query=self.cfg.k_query).sample(1, generator)[0]
        items = [(xs[i], ys[i]) for i in range(k)]
        bad = int(torch.randint(k, (1,), generator=generator))
        corrupted = list(items)
        corrupted[bad] = (xs[bad], ys[bad] + self.cfg.sine_corrupt)

        def collate(batch_items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.stack([x for x, _ in batch_items]), torch.stack([y for _, y in batch_items])

        def query_fn(forward: Any) -> torch.Tensor:
            return forward(xq).reshape(-1)

        return Episode(self.maml, items, collate, per_example_loss, query_fn, corrupted, bad)


class JMAKTask:
    """The JMAK prior on fresh synthetic curves; the explained output is t50 (s)."""

    name = "jmak"

    def __init__(self, cfg: Any) -> None:
        from matmeta.errors import CheckpointError
        from matmeta.kinetics.prior import DEFAULT_PRIOR, PriorConfig, build_maml, load_prior

        path = Path(cfg.jmak_prior) if cfg.jmak_prior else DEFAULT_PRIOR
        try:
            self.maml, metadata = load_prior(path)
            self.noise = float(metadata.get("model_config", {}).get("noise", 0.02))
            self.note = f"prior {path.name}"
        except CheckpointError as exc:
            from matmeta.console import warn

            warn(f"{exc}; using the untrained default JMAK prior instead")
            config = PriorConfig()
            self.maml, self.noise = build_maml(config), config.noise
            self.maml.eval()
            self.note = "untrained default prior (no checkpoint)"
        self.cfg = cfg

    def sizes(self) -> tuple[int, ...]:
        """Points per curve."""
        return self.cfg.jmak_points

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """One synthetic curve with ``k`` noisy points; t_ref fixed to the geometric mean of its times."""
        import functools

        from matmeta.kinetics.fit import collate, per_example_loss
        from matmeta.kinetics.synthetic import SyntheticConfig, sample_families, sample_times, true_fraction
        from matmeta.models.jmak import log_time_at_fraction

        synthetic = SyntheticConfig()
        ln_k, n, ln_t50, _, _ = sample_families(1, 1, synthetic, generator)
        time_s, _ = sample_times(ln_t50, synthetic, generator, points=k)
        clean = true_fraction(ln_k, n, time_s)
        noisy = (clean + synthetic.noise * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)).clamp(0, 1)
        items = [(float(t), float(x)) for t, x in zip(time_s[0], noisy[0], strict=True)]
        bad = int(torch.randint(k, (1,), generator=generator))
        t_bad, x_bad = items[bad]
        corrupted = list(items)
        shifted = x_bad + self.cfg.jmak_corrupt if x_bad < 0.5 else x_bad - self.cfg.jmak_corrupt
        corrupted[bad] = (t_bad, min(1.0, max(0.0, shifted)))
        ln_t_ref = sum(math.log(t) for t, _ in items) / k
        fixed = functools.partial(collate, t_ref=math.exp(ln_t_ref), noise=self.noise)

        def t50(forward: Any) -> torch.Tensor:
            params = forward.params
            return torch.exp(log_time_at_fraction(params["ln_k"], params["n"], 0.5) + ln_t_ref).reshape(1)

        # the per-point loss shares the prior penalty among the points: only the looped LOO is exact
        return Episode(self.maml, items, fixed, per_example_loss, t50, corrupted, bad, batchable=False)


class PredictorTask:
    """The crystal GNN on its test families (never seen in meta-training), adapted on heat_ref."""

    name = "predictor"

    def __init__(self, cfg: Any) -> None:
        from matmeta.errors import CheckpointError
        from matmeta.predict.config import DataConfig
        from matmeta.predict.data import ensure_store, load_table
        from matmeta.predict.predictor import Predictor

        predictor = Predictor.load(cfg.predictor_checkpoint or "perovskites")
        families = predictor.metadata.get("families", {})
        if not families.get("test"):
            raise CheckpointError(f"{predictor.path}: no test-family split in its metadata")
        recipe_data = predictor.metadata.get("recipe", {}).get("data", {"family_by": families.get("by", "b_site")})
        data = config_from_dict(DataConfig, recipe_data, f"{predictor.path} recipe [data]")
        table, _ = load_table(ensure_store(data), data)
        test = set(families["test"])
        self.family_members: dict[str, list[int]] = {}
        for i, family in enumerate(table.families):
            if family in test and math.isfinite(table.energy[i]):
                self.family_members.setdefault(family, []).append(i)
        self.families = sorted(self.family_members)
        known = torch.as_tensor(sorted(predictor.elements_seen), dtype=torch.long)
        self.graphs = {}  # elements never seen in training → the UNK embedding, as Predictor.graphs does
        for members in self.family_members.values():
            for i in members:
                z, edge_index, dist = table.graphs[i]
                self.graphs[i] = (torch.where(torch.isin(z, known), z, torch.zeros_like(z)), edge_index, dist)
        self.table = table
        self.predictor = predictor
        self.cfg = cfg
        n = sum(len(self.family_members[f]) for f in self.families)
        name = predictor.path.name if predictor.path else "checkpoint"
        self.note = f"{name}; {len(self.families)} test families, {n} structures"

    def sizes(self) -> tuple[int, ...]:
        """Support sizes."""
        return self.cfg.predictor_k

    def episode(self, k: int, generator: torch.Generator) -> Episode:
        """An episode: k labelled structures and ``k_query`` others of one test family."""
        from matmeta.errors import CheckpointError
        from matmeta.models.gnn import collate
        from matmeta.predict.data import per_example_loss

        eligible = [f for f in self.families if len(self.family_members[f]) >= k + self.cfg.k_query]
        if not eligible:
            raise CheckpointError(f"no test family has {k} + {self.cfg.k_query} structures")
        family = eligible[int(torch.randint(len(eligible), (1,), generator=generator))]
        members = self.family_members[family]
        order = torch.randperm(len(members), generator=generator).tolist()
        chosen = [members[j] for j in order[: k + self.cfg.k_query]]
        support, query = chosen[:k], chosen[k:]
        stats = self.predictor.stats

        def item(i: int, shift: float = 0.0) -> tuple[Any, ...]:
            graph = self.graphs[i]
            heat = np.array([self.table.energy[i] + shift])
            y = stats.encode(heat, np.array([np.nan]), np.array([float(graph[0].shape[0])]))[0]
            return (*graph, y)

        items = [item(i) for i in support]
        bad = int(torch.randint(k, (1,), generator=generator))
        corrupted = list(items)
        corrupted[bad] = item(support[bad], self.cfg.predictor_corrupt_ev)
        nan_y = torch.full((3,), math.nan)
        query_batch = collate([(*self.graphs[i], nan_y) for i in query])

        def query_fn(forward: Any) -> torch.Tensor:
            return self.predictor.target_values(forward(*query_batch.inputs()), query_batch, "heat_ref")

        return Episode(self.predictor.maml, items, collate, per_example_loss, query_fn, corrupted, bad)


TASKS = {"predictor": PredictorTask, "jmak": JMAKTask, "sine": SineTask}
