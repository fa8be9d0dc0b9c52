"""CrystalGNN: shapes, invariances, no input mutation, MAML compatibility (second order, ANIL)."""

from __future__ import annotations

import math

import pytest
import torch

from matmeta.models.gnn import CrystalGNN, GNNConfig, collate
from matmeta.models.layers import CGConv, EdgeGatedConv, GaussianExpansion, scatter_sum


def _graph(structure, cutoff=6.0, max_neighbors=12):
    from matmeta.graphs import GraphConfig, structure_to_graph
    from matmeta.predict.data import graph_from_data

    return graph_from_data(structure_to_graph(structure, GraphConfig(cutoff, max_neighbors)))


def _batch(*graphs):
    return collate([(*g, torch.full((3,), math.nan)) for g in graphs])


def test_gaussian_expansion_peaks_at_centres():
    rbf = GaussianExpansion(cutoff=5.0, n_rbf=6)  # centres 0, 1, ..., 5 Å, width 1 Å
    out = rbf(torch.tensor([2.0, 2.5]))
    assert out.shape == (2, 6)
    assert out[0, 2] == pytest.approx(1.0)
    assert out[0, 3] == pytest.approx(math.exp(-0.5))
    assert out[1, 2] == pytest.approx(out[1, 3])  # midway between two centres


def test_gaussian_expansion_has_no_subnormal_features():
    """Far tails are exact zeros, never float32 subnormals (which put CPU kernels on a slow path)."""
    rbf = GaussianExpansion(cutoff=6.0, n_rbf=32)  # width 0.19 Å: tails reach 1e-45 within the cutoff
    distances = torch.linspace(0.0, 6.0, 2001)
    out = rbf(distances)
    tiny = torch.finfo(torch.float32).tiny  # smallest normal float32
    assert not ((out > 0) & (out < tiny)).any()
    exact = torch.exp(-((distances[:, None].double() - rbf.centers.double()) ** 2) / (2 * rbf.width**2))
    assert float((out.double() - exact).abs().max()) < 1e-7  # float32 rounding only; the cut removes < 1e-26
    assert ((exact < 1e-30) & (out == 0)).sum() > 0  # the cut is active in this range


def test_scatter_sum_known_values():
    src = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = scatter_sum(src, torch.tensor([0, 2, 0, 2]), 3)
    assert out.squeeze(1).tolist() == [4.0, 0.0, 6.0]


def test_edge_gated_conv_node_without_edges_is_analytic():
    torch.manual_seed(0)
    conv = EdgeGatedConv(4)
    h = torch.randn(2, 4)
    e = torch.randn(1, 4)
    h_new, _ = conv(h, torch.tensor([[0], [1]]), e)  # only node 1 receives a message
    expected = h[0] + torch.nn.functional.silu(conv.norm_nodes(conv.dst_update(h[:1])))[0]
    assert torch.allclose(h_new[0], expected, atol=1e-6)
    assert not torch.allclose(h_new[1], h[1] + torch.nn.functional.silu(conv.norm_nodes(conv.dst_update(h[1:])))[0])


@pytest.mark.parametrize("conv", ["edge_gated", "cgcnn"])
def test_forward_shapes_and_input_untouched(conv, srtio3, nacl):
    torch.manual_seed(0)
    model = CrystalGNN(GNNConfig(hidden=16, layers=2, n_rbf=8, conv=conv)).eval()
    batch = _batch(_graph(srtio3), _graph(nacl))
    before = [t.clone() for t in (batch.atomic_numbers, batch.edge_index, batch.edge_dist, batch.batch)]
    out = model(*batch.inputs())
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    for old, new in zip(before, (batch.atomic_numbers, batch.edge_index, batch.edge_dist, batch.batch), strict=True):
        assert torch.equal(old, new)
    samples = model(*batch.inputs(), mc_samples=5)
    assert samples.shape == (5, 2, 3)
    assert samples[..., 0].std(0).min() > 0  # dropout active in MC samples even in eval mode
    assert torch.equal(model(*batch.inputs()), out)  # eval mode without samples is deterministic


def test_permutation_and_supercell_invariance(srtio3):
    """Reordering atoms changes nothing; a 2x1x1 supercell gives the same per-atom outputs."""
    torch.manual_seed(0)
    model = CrystalGNN(GNNConfig(hidden=16, layers=2, n_rbf=8, cutoff_angstrom=4.5)).eval()
    graph = _graph(srtio3, cutoff=4.5, max_neighbors=100)  # no neighbour cap: no tie-breaking effects
    shuffled = srtio3.copy()
    shuffled = shuffled.__class__.from_sites([shuffled[i] for i in (4, 2, 0, 3, 1)])
    supercell = srtio3.copy()
    supercell.make_supercell([2, 1, 1])
    out = model(*_batch(graph, _graph(shuffled, 4.5, 100), _graph(supercell, 4.5, 100)).inputs())
    assert torch.allclose(out[0], out[1], atol=1e-5)
    assert torch.allclose(out[0], out[2], atol=1e-5)


def test_unknown_embedding_is_mean_of_seen():
    model = CrystalGNN(GNNConfig(hidden=8, layers=1, n_rbf=4))
    model.set_unknown_embedding([8, 22, 38])
    expected = model.embedding.weight[[8, 22, 38]].mean(0)
    assert torch.allclose(model.embedding.weight[0], expected)


def test_maml_second_order_and_anil(srtio3, nacl):
    """Second-order meta-gradients exist and differ from first-order ones; ANIL adapts the head only."""
    from matmeta.meta.maml import MAML
    from matmeta.predict.data import loss_fn

    torch.manual_seed(0)
    y = torch.tensor([0.5, 1.0, -0.3])
    support = collate([(*_graph(srtio3), y), (*_graph(nacl), y)])
    query = collate([(*_graph(nacl), y)])

    grads = {}
    for first_order in (False, True):
        torch.manual_seed(0)
        model = CrystalGNN(GNNConfig(hidden=8, layers=1, n_rbf=4, dropout=0.0))
        maml = MAML(model, inner_lr=0.1, inner_steps=2, first_order=first_order)
        maml.train()
        maml.meta_loss([(support, query)], loss_fn).backward()
        grads[first_order] = model.convs[0].src_gate.weight.grad.clone()
    assert torch.isfinite(grads[False]).all()
    assert not torch.allclose(grads[False], grads[True])

    anil = MAML(CrystalGNN(GNNConfig(hidden=8, layers=1, n_rbf=4)), adapt="head")
    assert anil.adapt_names and all(name.startswith("head.") for name in anil.adapt_names)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in anil.modules())


def test_cgconv_edges_pass_through():
    conv = CGConv(4)
    h, e = torch.randn(3, 4), torch.randn(2, 4)
    _, e_out = conv(h, torch.tensor([[0, 1], [1, 2]]), e)
    assert e_out is e


def test_config_validation():
    with pytest.raises(ValueError, match="conv"):
        GNNConfig(conv="transformer")
    with pytest.raises(ValueError, match="dropout"):
        GNNConfig(dropout=1.0)
