import itertools
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from matmeta.errors import MatmetaInputError
from matmeta.graphs import GRAPH_SCHEMA, GraphConfig, structure_to_graph


def brute_force_pairs(structure, cutoff):
    """Every (centre i, neighbour j, image n) with 0 < |x_j + n L - x_i| <= cutoff, by explicit image sums."""
    lattice = structure.lattice.matrix
    frac = np.mod(structure.frac_coords, 1.0)
    cart = frac @ lattice
    volume = abs(np.linalg.det(lattice))
    # distance between opposite faces of the cell along each lattice direction
    widths = [volume / np.linalg.norm(np.cross(lattice[(k + 1) % 3], lattice[(k + 2) % 3])) for k in range(3)]
    reach = [int(math.ceil(cutoff / w)) + 1 for w in widths]
    pairs = {}
    for n in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.array(n) @ lattice
        for i in range(len(cart)):
            for j in range(len(cart)):
                d = np.linalg.norm(cart[j] + shift - cart[i])
                if 1e-8 < d <= cutoff:
                    pairs[(i, j, n)] = d
    return pairs


def graph_pairs(graph):
    out = {}
    offsets = graph.cell_offsets.numpy().astype(int)
    for e in range(graph.edge_index.shape[1]):
        j, i = graph.edge_index[:, e].tolist()
        out[(i, j, tuple(offsets[e]))] = float(graph.edge_dist[e])
    return out


def triclinic():
    lattice = Lattice.from_parameters(3.1, 4.2, 5.3, 70.0, 100.0, 115.0)
    return Structure(lattice, ["Si", "O", "O"], [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45]])


def check_against_brute_force(structure, cutoff):
    graph = structure_to_graph(structure, GraphConfig(cutoff, 10_000))
    expected = brute_force_pairs(structure, cutoff)
    got = graph_pairs(graph)
    assert set(got) == set(expected)
    for key, d in expected.items():
        assert got[key] == pytest.approx(d, abs=1e-4)
    return graph


def test_schema_dtypes_and_shapes(srtio3):
    graph = structure_to_graph(srtio3, GraphConfig(6.0, 12), y=[1.5, 2.0])
    n, e = 5, graph.edge_index.shape[1]
    for name, (dtype, shape) in GRAPH_SCHEMA.items():
        tensor = getattr(graph, name)
        assert str(tensor.dtype) == f"torch.{dtype}", name
        sizes = {"N": n, "E": e, "T": 2}
        assert tuple(tensor.shape) == tuple(sizes.get(s, s) for s in shape), name
    assert e == 5 * 12
    assert graph.y.tolist() == [[1.5, 2.0]]


def test_fcc_cu_twelve_neighbours(cu):
    a = 3.615
    for cutoff in (3.0, 6.0):  # 6 Å reaches further shells; max_neighbors keeps the nearest 12
        graph = structure_to_graph(cu, GraphConfig(cutoff, 12))
        assert torch.bincount(graph.edge_index[1]).tolist() == [12, 12, 12, 12]
        assert torch.allclose(graph.edge_dist, torch.full_like(graph.edge_dist, a / math.sqrt(2)), atol=1e-5)
    check_against_brute_force(cu, 5.2)


def test_rocksalt_nacl(nacl):
    graph = structure_to_graph(nacl, GraphConfig(3.0, 50))
    assert torch.bincount(graph.edge_index[1]).tolist() == [6] * 8
    assert torch.allclose(graph.edge_dist, torch.full_like(graph.edge_dist, 5.64 / 2), atol=1e-5)
    z = graph.atomic_numbers
    assert bool((z[graph.edge_index[0]] != z[graph.edge_index[1]]).all())  # nearest neighbours are the other ion
    graph = check_against_brute_force(nacl, 4.5)  # adds the 12 like ions at a/√2 = 3.99 Å
    assert torch.bincount(graph.edge_index[1]).tolist() == [18] * 8
    graph = check_against_brute_force(nacl, 5.0)  # and the 8 unlike ions at a√3/2 = 4.88 Å
    assert torch.bincount(graph.edge_index[1]).tolist() == [26] * 8


def test_triclinic_cutoff_larger_than_cell():
    structure = triclinic()
    graph = check_against_brute_force(structure, 7.5)
    assert graph.edge_index.shape[1] > 100


def test_one_atom_cell_with_cutoff_beyond_cell():
    structure = Structure(Lattice.cubic(2.0), ["Po"], [[0, 0, 0]])
    graph = check_against_brute_force(structure, 4.5)
    # simple cubic shells within 4.5 Å: 6 at 2, 12 at 2√2, 8 at 2√3, 6 at 4, 24 at 2√5
    assert graph.edge_index.shape[1] == 6 + 12 + 8 + 6 + 24
    assert bool((graph.edge_index == 0).all())  # every neighbour is an image of the one atom


def test_edge_vectors_follow_offsets():
    structure = triclinic()
    graph = structure_to_graph(structure, GraphConfig(6.0, 20))
    j, i = graph.edge_index
    cell = graph.cell[0].double()
    vec = graph.pos.double()[j] + graph.cell_offsets.double() @ cell - graph.pos.double()[i]
    assert torch.allclose(vec.float(), graph.edge_vec, atol=1e-4)
    assert torch.allclose(graph.edge_vec.norm(dim=1), graph.edge_dist, atol=1e-4)
    assert bool((graph.cell_offsets == graph.cell_offsets.round()).all())
    frac = graph.pos.double() @ torch.linalg.inv(cell)
    assert bool(((frac > -1e-6) & (frac < 1 + 1e-6)).all())  # positions wrapped into the cell


def test_max_neighbors_keeps_the_nearest_deterministically():
    structure = triclinic()
    full = brute_force_pairs(structure, 6.0)
    graph = structure_to_graph(structure, GraphConfig(6.0, 4))
    assert torch.bincount(graph.edge_index[1]).tolist() == [4, 4, 4]
    for i in range(3):
        nearest = sorted(d for (c, _, _), d in full.items() if c == i)[:4]
        kept = sorted(graph.edge_dist[graph.edge_index[1] == i].tolist())
        assert kept == pytest.approx(nearest, abs=1e-5)
    again = structure_to_graph(structure, GraphConfig(6.0, 4))
    assert torch.equal(graph.edge_index, again.edge_index) and torch.equal(graph.cell_offsets, again.cell_offsets)


def test_tie_break_inside_a_shell_is_deterministic(cu):
    first = structure_to_graph(cu, GraphConfig(3.0, 5))
    second = structure_to_graph(cu.copy(), GraphConfig(3.0, 5))
    assert torch.equal(first.edge_index, second.edge_index)
    assert torch.equal(first.cell_offsets, second.cell_offsets)
    # ties are ordered by neighbour index first
    for i in range(4):
        neighbours = first.edge_index[0][first.edge_index[1] == i].tolist()
        assert neighbours == sorted(neighbours)


def test_isolated_atom_policy():
    structure = Structure(Lattice.cubic(8.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 6.9 Å apart
    with pytest.raises(MatmetaInputError, match="lonely: 2 atom"):
        structure_to_graph(structure, GraphConfig(5.0, 12), name="lonely")
    graph = structure_to_graph(structure, GraphConfig(5.0, 12), on_isolated_atoms="ignore")
    assert graph.edge_index.shape == (2, 0) and graph.edge_dist.shape == (0,) and graph.num_nodes == 2
    graph = structure_to_graph(structure, GraphConfig(5.0, 12), on_isolated_atoms="warn")
    assert graph.edge_index.shape[1] == 0


def test_partial_occupancy_refused():
    structure = Structure(Lattice.cubic(4.0), [{"Sr": 0.5, "Ba": 0.5}], [[0, 0, 0]])
    with pytest.raises(MatmetaInputError, match="partially occupied"):
        structure_to_graph(structure)


def test_batches_with_offsets(cu, nacl):
    graphs = [structure_to_graph(cu, GraphConfig(3.0, 12)), structure_to_graph(nacl, GraphConfig(3.0, 12))]
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 2 and batch.cell.shape == (2, 3, 3)
    assert batch.edge_index.max().item() == 4 + 8 - 1
    assert batch.edge_index[:, 48:].min().item() == 4  # second graph's node indices are shifted


@pytest.mark.parametrize("kwargs", [{"cutoff_angstrom": 0.0}, {"cutoff_angstrom": float("nan")}, {"max_neighbors": 0}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        GraphConfig(**kwargs)


def test_config_round_trip():
    config = GraphConfig(5, 8)
    assert GraphConfig.from_dict(config.to_dict()) == config
    assert config.cutoff_angstrom == 5.0 and isinstance(config.cutoff_angstrom, float)
    with pytest.raises(ValueError, match="unknown"):
        GraphConfig.from_dict({"cutoff": 5})
