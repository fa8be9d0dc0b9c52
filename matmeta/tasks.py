"""Meta-learning tasks: leave-family-out splits and k-shot episodes drawn from one family.

A *family* (see :mod:`matmeta.families`) is one task distribution: an episode takes ``k_support``
labelled items of one family to adapt on and ``k_query`` further items of the same family to
score the adaptation. Families, never single items, are split into train/validation/test, so a
test family is never seen during meta-training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matmeta.errors import MatmetaInputError, StoreError


@dataclass(frozen=True)
class FamilySplit:
    """Family names of each split (sorted), and the families left out for being too small."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    def of(self, name: str) -> tuple[str, ...]:
        """The families of split ``name`` ("train", "val" or "test")."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-ready dict (for checkpoint metadata)."""
        return {
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "dropped": list(self.dropped),
        }


def split_families(
    families: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    min_size: int = 1,
    groups: dict[str, str] | None = None,
) -> FamilySplit:
    """Seeded leave-family-out split of family names into train/val/test.

    Args:
        families: The family key of every item (repeats count the family's size), or unique names.
        fractions: Shares of families (not items) for train, val and test; must sum to 1.
        seed: The same seed and families give the same split.
        min_size: Families with fewer items are left out of every split (``dropped``).
        groups: family → group: families of one group land in the same split (e.g. one structure type
            under two Wyckoff settings); the shares then count groups. None: every family its own group.

    Returns:
        A :class:`FamilySplit`. Validation and test get at least one family each when their
        fraction is positive and there are at least three families.

    Raises:
        ValueError: bad fractions, or no family of at least ``min_size`` items.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    sizes = Counter(families)
    kept = sorted(f for f, n in sizes.items() if n >= min_size)
    dropped = tuple(sorted(f for f, n in sizes.items() if n < min_size))
    if not kept:
        raise ValueError(f"no family has at least {min_size} items")
    if groups:
        members: dict[str, list[str]] = {}
        for family in kept:
            members.setdefault(groups.get(family, family), []).append(family)
        names = sorted(members)
        shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
        split = split_families(shuffled, fractions, seed, 1)
        pick = {name: [f for group in split.of(name) for f in members[group]] for name in ("train", "val", "test")}
        return FamilySplit(*(tuple(sorted(pick[name])) for name in ("train", "val", "test")), dropped=dropped)
    order = [kept[i] for i in np.random.default_rng(seed).permutation(len(kept))]
    n = len(order)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_val = min(n_val, n - n_test)
    n_train = n - n_val - n_test
    if fractions[0] > 0 and n_train < 1:
        raise ValueError(f"{n} families are too few for fractions {fractions}")
    return FamilySplit(
        train=tuple(sorted(order[:n_train])),
        val=tuple(sorted(order[n_train : n_train + n_val])),
        test=tuple(sorted(order[n_train + n_val :])),
        dropped=dropped,
    )


@dataclass(frozen=True)
class Episode:
    """One task instance: support and query item indices (into the store) of one family.

    Shapes:
        support: (k_support,) int64; query: (k_query,) int64; disjoint.
    """

    family: str
    support: np.ndarray
    query: np.ndarray


@dataclass
class EpisodeSampler:
    """Draws k-shot episodes from the given families.

    Args:
        family_of_item: The family key of every item (e.g. ``store.family_keys("b_site")``).
        families: The families to draw from (e.g. ``split.train``).
        k_support: Support items per episode.
        k_query: Query items per episode; ``None`` takes all remaining items of the family.
        seed: Seeds the sampler's own generator (used when ``sample`` gets none).
        weighting: ``"uniform"`` picks each family equally often; ``"size"`` in proportion to its size.

    Raises:
        MatmetaInputError: a family with too few items, or a family that has no item.
    """

    family_of_item: Sequence[str]
    families: Sequence[str]
    k_support: int
    k_query: int | None
    seed: int = 0
    weighting: str = "uniform"
    _members: dict[str, np.ndarray] = field(init=False, repr=False)
    _names: tuple[str, ...] = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k_support < 0 or (self.k_query is not None and self.k_query < 1):
            raise ValueError(f"need k_support >= 0 and k_query >= 1 (got {self.k_support}, {self.k_query})")
        if self.weighting not in ("uniform", "size"):
            raise ValueError(f"weighting must be 'uniform' or 'size', got {self.weighting!r}")
        keys = np.asarray(list(self.family_of_item), dtype=object)
        wanted = list(dict.fromkeys(self.families))
        if not wanted:
            raise MatmetaInputError("episode sampler: no family given")
        members = {}
        need = self.k_support + (self.k_query or 1)
        too_small = []
        for family in wanted:
            index = np.flatnonzero(keys == family).astype(np.int64)
            if len(index) == 0:
                raise MatmetaInputError(f"episode sampler: family {family!r} has no item")
            if len(index) < need:
                too_small.append(f"{family} ({len(index)})")
            members[family] = index
        if too_small:
            raise MatmetaInputError(
                f"episode sampler: {len(too_small)} family(ies) have fewer than k_support + k_query = {need} "
                f"items: {', '.join(too_small[:8])}{', …' if len(too_small) > 8 else ''}"
            )
        self._members = members
        self._names = tuple(wanted)
        self._rng = np.random.default_rng(self.seed)

    @property
    def family_names(self) -> tuple[str, ...]:
        """The families episodes are drawn from."""
        return self._names

    def members(self, family: str) -> np.ndarray:
        """Indices of the items of ``family`` (sorted)."""
        return self._members[family].copy()

    def _probabilities(self) -> np.ndarray | None:
        if self.weighting == "uniform":
            return None
        sizes = np.array([len(self._members[f]) for f in self._names], dtype=np.float64)
        return sizes / sizes.sum()

    def sample(self, generator_or_rng: Any = None, family: str | None = None) -> Episode:
        """One episode, from ``family`` or a family picked at random.

        Args:
            generator_or_rng: A ``numpy.random.Generator``, a ``torch.Generator`` or ``None``
                (the sampler's own generator, seeded with ``seed``).
            family: Draw from this family instead of picking one.
        """
        rng = self._as_numpy_rng(generator_or_rng)
        if family is None:
            family = self._names[int(rng.choice(len(self._names), p=self._probabilities()))]
        elif family not in self._members:
            raise MatmetaInputError(f"episode sampler: family {family!r} is not one of its families")
        index = self._members[family]
        k_query = len(index) - self.k_support if self.k_query is None else self.k_query
        chosen = index[rng.permutation(len(index))[: self.k_support + k_query]]
        return Episode(family, chosen[: self.k_support].copy(), chosen[self.k_support :].copy())

    def sample_many(self, n: int, generator_or_rng: Any = None) -> list[Episode]:
        """``n`` episodes (families picked independently)."""
        rng = self._as_numpy_rng(generator_or_rng)
        return [self.sample(rng) for _ in range(n)]

    def fixed_episodes(self, per_family: int = 1, seed: int = 0) -> list[Episode]:
        """A reproducible evaluation set: ``per_family`` episodes of every family, in family order."""
        rng = np.random.default_rng(seed)
        return [self.sample(rng, family=f) for f in self._names for _ in range(per_family)]

    def _as_numpy_rng(self, generator_or_rng: Any) -> np.random.Generator:
        if generator_or_rng is None:
            return self._rng
        if isinstance(generator_or_rng, np.random.Generator):
            return generator_or_rng
        if type(generator_or_rng).__name__ == "Generator" and hasattr(generator_or_rng, "manual_seed"):
            import torch

            # derive a numpy generator from the torch generator's stream (advances it, reproducibly)
            seed = int(torch.randint(0, 2**62, (1,), generator=generator_or_rng).item())
            return np.random.default_rng(seed)
        if isinstance(generator_or_rng, (int, np.integer)):
            return np.random.default_rng(int(generator_or_rng))
        raise TypeError(f"expected a numpy or torch Generator, got {type(generator_or_rng).__name__}")


class FamilyEpisodes:
    """Episode source for the meta-trainer: (support, query) from one family of a table of graphs.

    Args:
        table: the graphs, with ``families`` (one key per item) and ``batch(indices)`` (e.g.
            :class:`matmeta.predict.data.GraphTable`).
        families: the families tasks are drawn from (e.g. the training split).
        k_support: support sizes; each task picks one of them at random.
        k_query: query size.
        seed: seed of the underlying ``EpisodeSampler``.
    """

    def __init__(self, table: Any, families: Sequence[str], k_support: Sequence[int], k_query: int, seed: int) -> None:
        self.table = table
        self.samplers = []
        for k in k_support:  # a family too small for k + k_query (a 34-member one at k = 20) joins the smaller k only
            usable = families_of_size(table.families, families, int(k) + int(k_query))
            if usable:
                self.samplers.append(EpisodeSampler(table.families, usable, int(k), int(k_query), seed))
        if not self.samplers:
            raise StoreError(f"no family has {min(k_support)} + {k_query} structures for an episode")

    def sample(self, n_tasks: int, generator: Any) -> list[tuple[Any, Any]]:
        """``n_tasks`` tasks ``(support, query)`` (``generator``: a ``torch.Generator``)."""
        import torch

        tasks = []
        for _ in range(n_tasks):
            sampler = self.samplers[int(torch.randint(len(self.samplers), (1,), generator=generator))]
            episode = sampler.sample(generator)
            tasks.append((self.table.batch(episode.support), self.table.batch(episode.query)))
        return tasks


def families_of_size(keys: Sequence[str], families: Sequence[str], size: int) -> list[str]:
    """The ``families`` with at least ``size`` members among ``keys`` (in the order given)."""
    counts = Counter(keys)
    return [f for f in families if counts[f] >= size]
