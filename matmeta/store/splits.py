"""A family-level train / validation / test split of a store, to be fixed in a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def store_family_split(
    store: str | Path,
    by: str,
    min_size: int = 30,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Any:
    """Seeded split of the store's families of at least ``min_size`` members (a :class:`matmeta.tasks.FamilySplit`).

    Prototype families are grouped by their signature (site symmetries instead of Wyckoff letters), so
    one structure type under two origin settings never straddles the split.
    """
    from matmeta.store.reader import GraphStore
    from matmeta.tasks import split_families

    graph_store = GraphStore(store)
    keys = graph_store.family_keys(by, undefined="empty")
    groups = None
    if by == "prototype":
        signatures = graph_store.family_keys("prototype_signature")
        groups = dict(zip(keys, signatures, strict=True))
    return split_families([k for k in keys if k], fractions, seed, min_size, groups=groups)


def split_as_toml(split: Any, by: str, min_size: int) -> str:
    """The ``[data]`` lines that fix ``split`` in a recipe."""

    def names(values: tuple[str, ...]) -> str:
        return "[\n" + "".join(f'    "{v}",\n' for v in values) + "]"

    return (
        f'family_by = "{by}"\nmin_family_size = {min_size}\n'
        f"# {len(split.train)} training families (every other family of >= {min_size} members)\n"
        f"val_families = {names(split.val)}\ntest_families = {names(split.test)}\n"
    )
