"""How far a prediction can move under small atomic displacements: projected gradient ascent on positions.

``matmeta predict --sensitivity`` adds, per structure and property, the largest change of the prediction that
displacements of at most ε per atom (Å, Euclidean) reach after a few steps of projected gradient ascent (PGD,
Madry et al. 2018), up and down. Generated and unrelaxed cells are perturbed structures, so a large value warns
that the model's judgement of such a cell hangs on details of its geometry.

The displaced graph keeps the undisplaced neighbour list (which pairs are edges, and their image offsets) and
recomputes every edge length from the displaced positions — exact for displacements that move no pair across the
cutoff or past the neighbour cap. A rebuilt graph can jump: in a high-symmetry cell the cap of 12 neighbours
cuts through a shell of equidistant atoms (rock salt: 6 + 12 within the second shell), and any displacement
changes which of them are kept; that jump is a property of the graph rule, not a sensitivity of the network,
and is not counted here.

Shapes: a structure of N atoms and E edges; positions (N, 3) Å.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

EPSILON_ANGSTROM = 0.05
STEPS = 5


def _project(delta: Tensor, epsilon: float) -> Tensor:
    """Each atom's displacement scaled back into the ball of radius ``epsilon``."""
    norms = delta.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return delta * torch.clamp(epsilon / norms, max=1.0)


def fixed_edge_outputs(predictor: Any, structure: Any) -> tuple[Any, Tensor]:
    """``(outputs, pos)`` of a structure: the network's energy and gap as a differentiable function of displacements.

    ``outputs(delta)`` is ``[energy (public unit), gap if non-metal (eV)]`` with the atoms moved by ``delta``
    (N, 3) Å, on the undisplaced neighbour list.
    """
    from matmeta.graphs import structure_graph_arrays
    from matmeta.models.gnn import composition_inputs

    arrays, _ = structure_graph_arrays(structure, predictor.graph_config, on_isolated_atoms="ignore")
    pos = torch.as_tensor(arrays["pos"], dtype=torch.float32)
    cell = torch.as_tensor(arrays["cell"][0], dtype=torch.float32)
    edge_index = torch.as_tensor(arrays["edge_index"])
    shift = torch.as_tensor(arrays["cell_offsets"]) @ cell
    z = torch.as_tensor(arrays["atomic_numbers"])
    batch = torch.zeros(len(z), dtype=torch.long)
    atom, graph = composition_inputs(z, batch, 1)
    n_atoms = torch.tensor([float(len(z))])

    def outputs(delta: Tensor) -> Tensor:
        moved = pos + delta
        dist = (moved[edge_index[0]] + shift - moved[edge_index[1]]).norm(dim=1)
        out = predictor.forward(z, edge_index, dist, batch, 1, atom_features=atom, graph_features=graph)
        energy = predictor.stats.decode_heat(out[:, 0], n_atoms)
        energy = energy / n_atoms if predictor.names.energy_per_atom else energy
        return torch.stack([energy[0], predictor.stats.decode_gap(out[:, 2])[0]])

    return outputs, pos


def worst_changes(
    predictor: Any, structure: Any, epsilon: float = EPSILON_ANGSTROM, steps: int = STEPS, seed: int = 0
) -> dict[str, float]:
    """The largest change of the energy (its public unit) and of the PBE-level gap if non-metal (eV) within ε."""
    outputs, pos = fixed_edge_outputs(predictor, structure)
    predictor.maml.eval()
    with torch.no_grad():
        base = outputs(torch.zeros_like(pos))
    generator = torch.Generator().manual_seed(seed)
    worst = torch.zeros(2)
    step = 2.5 * epsilon / max(steps, 1)
    for target in range(2):
        for sign in (1.0, -1.0):
            delta = _project(torch.randn(pos.shape, generator=generator) * epsilon * 0.1, epsilon)
            for _ in range(steps):
                delta = delta.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(sign * outputs(delta)[target], delta)
                direction = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
                delta = _project(delta + step * direction, epsilon)
            with torch.no_grad():
                worst[target] = torch.maximum(worst[target], (outputs(delta)[target] - base[target]).abs())
    return {"energy": float(worst[0]), "gap": float(worst[1])}


def sensitivity_rows(predictor: Any, structures: Sequence[Any], epsilon: float = EPSILON_ANGSTROM) -> list[dict]:
    """Per structure: ``<energy>_sensitivity`` and ``band_gap_pbe_sensitivity`` (the model's gap if non-metal)."""
    energy, gap = predictor.names.names
    rows = []
    for structure in structures:
        found = worst_changes(predictor, structure, epsilon)
        rows.append({f"{energy}_sensitivity": found["energy"], f"{gap}_sensitivity": found["gap"]})
    return rows


def displaced(structure: Any, epsilon: float, seed: int = 0) -> Any:
    """``structure`` with every atom moved by exactly ``epsilon`` Å in a random direction (for checks)."""
    rng = np.random.default_rng(seed)
    moves = rng.normal(size=(len(structure), 3))
    moves *= epsilon / np.linalg.norm(moves, axis=1, keepdims=True)
    out = structure.copy()
    for i, move in enumerate(moves):
        out.translate_sites([i], move, frac_coords=False, to_unit_cell=False)
    return out
