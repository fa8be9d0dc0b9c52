"""Shared fixtures: tiny known crystals and the shared development data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$MATMETA_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MATMETA_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


def require_shared(relative: str) -> Path:
    """Path of a shared data file; in CI a missing file fails the test, elsewhere it skips."""
    path = shared_data_dir() / relative
    if not path.exists():
        message = f"shared data file missing: {path} (set MATMETA_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and does not fight the other test worker."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def perovskites_csv() -> Path:
    return require_shared("perovskites/perovskites.csv")


@pytest.fixture
def ttt_csv() -> Path:
    return require_shared("jmak/ttt_steel.csv")


@pytest.fixture
def bainite_csv() -> Path:
    """The two measured dilatometry bainite curves (~3,000 points each); tests take slices of them."""
    return require_shared("kinetics/bainite_isothermal.csv")


@pytest.fixture
def cu():
    """fcc Cu, conventional cell a = 3.615 Å (12 nearest neighbours at a/√2)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])


@pytest.fixture
def nacl():
    """Rocksalt NaCl, a = 5.64 Å (6 nearest neighbours at a/2)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def srtio3():
    """Cubic perovskite SrTiO3, a = 3.905 Å (Ti–O 1.9525 Å, octahedral B site)."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def _random_graph_table(rng, families: list[str]):
    """Small random graphs (2–4 atoms of a few elements), one third non-metals, with their normalised targets."""
    import numpy as np
    import torch

    from matmeta.predict.data import GraphTable, TargetStats

    graphs = []
    for _ in families:
        n = int(rng.integers(2, 5))
        z = torch.as_tensor(rng.choice([8, 22, 38, 40, 56, 26], size=n))
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        graphs.append(
            (z, torch.as_tensor(pairs).T, torch.as_tensor(rng.uniform(1.8, 3.5, len(pairs)), dtype=torch.float32))
        )
    n_atoms = np.array([g[0].shape[0] for g in graphs], float)
    heat = rng.normal(0.0, 1.0, len(graphs)) * n_atoms
    gap = np.where(rng.random(len(graphs)) < 1 / 3, rng.uniform(0.5, 5.0, len(graphs)), 0.0)
    stats = TargetStats.fit(heat, gap, n_atoms)
    return GraphTable(
        graphs, stats.encode(heat, gap, n_atoms), heat, gap, families, [str(i) for i in range(len(graphs))]
    ), stats


@pytest.fixture
def random_graph_table():
    """``(rng, families) -> (GraphTable, TargetStats)``: small random graphs, one third non-metals."""
    return _random_graph_table
