"""Task-batched crystal graphs (matmeta.predict.batched): the padded vmap path equals the per-task loop."""

from __future__ import annotations

import pytest
import torch

from matmeta.meta.maml import PredictorMAML
from matmeta.models.gnn import CrystalGNN, GNNConfig, collate
from matmeta.predict.batched import GraphStacker, composition_arrays, pad_graphs
from matmeta.predict.data import loss_fn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ELEMENTS = (8, 9, 22, 38, 56, 26, 28)  # O, F, Ti, Sr, Ba, Fe, Ni: real elements (composition features)


def _graph(g: torch.Generator, dtype: torch.dtype) -> tuple:
    """A random crystal-like graph: 2–5 atoms, every atom with 1–4 incoming edges, a target row."""
    n = int(torch.randint(2, 6, (1,), generator=g))
    z = torch.tensor(ELEMENTS)[torch.randint(len(ELEMENTS), (n,), generator=g)]
    dst = torch.repeat_interleave(torch.arange(n), torch.randint(1, 5, (n,), generator=g))
    src = torch.randint(n, dst.shape, generator=g)
    dist = 1.5 + 3.0 * torch.rand(dst.shape, generator=g, dtype=dtype)
    metal = float(torch.rand((), generator=g) < 0.4)
    gap = float("nan") if metal else float(torch.randn((), generator=g))
    y = torch.tensor([float(torch.randn((), generator=g)), metal, gap], dtype=dtype)
    return z, torch.stack([src, dst]), dist, y


def _tasks(sizes: list[tuple[int, int]], seed: int = 0, dtype: torch.dtype = torch.float64) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (collate([_graph(g, dtype) for _ in range(k)]), collate([_graph(g, dtype) for _ in range(q)])) for k, q in sizes
    ]


def _maml(steps: int = 3, node_features: str = "descriptors") -> PredictorMAML:
    torch.manual_seed(0)
    config = GNNConfig(hidden=8, layers=2, n_rbf=6, dropout=0.0, node_features=node_features, composition_features=True)
    maml = PredictorMAML(
        CrystalGNN(config).double(), inner_lr=0.05, inner_steps=steps, learn_inner_lr=True, per_element_lr=True
    )
    maml.stacker = GraphStacker(config, max_padding=3.0)  # the tests' tasks differ in size on purpose
    return maml


def _meta_grads(maml: PredictorMAML, tasks: list, vectorize: bool | None) -> tuple[float, list[torch.Tensor]]:
    maml.zero_grad(set_to_none=True)
    loss = maml.meta_loss(tasks, loss_fn, vectorize=vectorize)
    loss.backward()
    return float(loss.detach()), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in maml.parameters()]


@pytest.mark.parametrize("node_features", ["descriptors", "both"])
def test_padded_vmap_second_order_meta_gradient_equals_the_loop(node_features):
    """Float64, second order, 3 inner steps, Meta-SGD rates, tasks of different sizes: same loss and gradients."""
    maml = _maml(node_features=node_features)
    tasks = _tasks([(3, 4), (5, 2), (2, 6), (4, 4)])
    assert maml.stacker(tasks) is not None  # the vectorised path is really taken below
    loop_loss, loop = _meta_grads(maml, tasks, vectorize=False)
    vmap_loss, vmapped = _meta_grads(maml, tasks, vectorize=None)
    assert vmap_loss == pytest.approx(loop_loss, rel=1e-12)
    assert all(g.abs().max() > 0 for g in loop[:3])  # gradients reach the weights (not a vacuous comparison)
    for a, b in zip(loop, vmapped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_padded_vmap_eval_mode_is_first_order_and_equals_the_loop():
    maml = _maml(steps=2)
    maml.eval()
    tasks = _tasks([(4, 3), (2, 5)], seed=3)
    with torch.no_grad():
        loop = maml.meta_loss(tasks, loss_fn, vectorize=False)
        vmapped = maml.meta_loss(tasks, loss_fn)
    assert float(vmapped) == pytest.approx(float(loop), rel=1e-12)


def test_padding_leaves_real_graph_outputs_unchanged_and_weights_them():
    torch.manual_seed(0)
    model = CrystalGNN(GNNConfig(hidden=8, layers=2, n_rbf=6, node_features="both", composition_features=True))
    model.eval()
    tasks = _tasks([(3, 1), (5, 1)], seed=1, dtype=torch.float32)
    batches = [s for s, _ in tasks]
    padded = pad_graphs(batches, max_padding=3.0)
    assert padded.y.shape == (2, 6, 3) and padded.weight.sum(1).tolist() == [3.0, 5.0]
    for t, batch in enumerate(batches):
        one = type(padded)(**{name: getattr(padded, name)[t] for name in padded.__dataclass_fields__})
        out = model(*one.inputs(), **one.extra())
        torch.testing.assert_close(out[: batch.num_graphs], model(*batch.inputs()), rtol=0, atol=0)
    atom, graph = composition_arrays(batches[0])
    assert atom.shape == (batches[0].atomic_numbers.shape[0], 4) and graph.shape == (3, 4)


def test_wasteful_padding_falls_back_to_the_loop():
    tasks = _tasks([(1, 1), (12, 1)], seed=2)
    assert pad_graphs([s for s, _ in tasks], max_padding=1.5) is None
    assert GraphStacker(GNNConfig())(_tasks([(4, 3), (5, 3)])) is None  # 1.1 by default: near-uniform only
    assert GraphStacker(GNNConfig())(_tasks([(5, 3)]) * 3) is not None  # same shapes: no padding but one atom
    stacker = GraphStacker(GNNConfig(), max_padding=1.5)
    assert stacker(tasks) is None
    assert stacker([(torch.zeros(2), torch.zeros(2))]) is None  # not graphs


def test_finetune_batched_leave_one_out_equals_the_loop():
    """matmeta finetune: the n leave-one-out adaptations in one vmapped program = n adaptations in a loop."""
    from matmeta.predict.adaptation import leave_one_out
    from matmeta.predict.config import MAMLSettings
    from matmeta.predict.train import untrained_predictor

    config = GNNConfig(hidden=8, layers=2, n_rbf=6, node_features="descriptors", composition_features=True)
    predictor = untrained_predictor(config, MAMLSettings(inner_lr=0.05, per_element_lr=True))
    g = torch.Generator().manual_seed(4)
    items = [_graph(g, torch.float32) for _ in range(5)]
    items = [(*item[:3], torch.tensor([0.5 * i, float("nan"), 0.0])) for i, item in enumerate(items)]
    values = torch.linspace(-1.0, 1.0, 5).numpy()
    batched = leave_one_out(predictor, items, values, "heat_ref", 3, predictor.loss)
    predictor.maml.stacker = None
    loop = leave_one_out(predictor, items, values, "heat_ref", 3, predictor.loss)
    unadapted = loop["unadapted"]
    assert abs(loop["adapted"] - unadapted).max() > 1e-3  # the adaptation moved the predictions
    torch.testing.assert_close(
        torch.as_tensor(batched["adapted"]), torch.as_tensor(loop["adapted"]), rtol=1e-4, atol=1e-5
    )


def test_padded_path_gives_the_open_shell_hurdle_its_flags_without_composition_features():
    """An identity-embedding model reads no composition features; once the hurdle is set it needs their flags."""
    from matmeta.predict.config import set_hurdle

    torch.manual_seed(0)
    config = GNNConfig(hidden=8, layers=2, n_rbf=6, dropout=0.0, node_features="embedding")
    maml = PredictorMAML(CrystalGNN(config).double(), inner_lr=0.05, inner_steps=2)
    maml.stacker = GraphStacker(config)
    assert not maml.stacker.needed
    set_hurdle(maml, {"model_config": {}}, 3.0)
    g = torch.Generator().manual_seed(3)

    def magnesia(graph: tuple) -> tuple:  # Mg/O alternating: closed-shell MgO when the atom count is even
        return (torch.tensor([12, 8] * 3)[: graph[0].shape[0]], *graph[1:])

    tasks = [
        tuple(collate([magnesia(_graph(g, torch.float64)) for _ in range(n)]) for n in sizes)
        for sizes in ((3, 4), (5, 2), (2, 6))
    ]
    closed = torch.cat([composition_arrays(b)[1][:, 1] for task in tasks for b in task])
    assert 0 < closed.sum() < closed.numel()  # open- and closed-shell compositions both occur
    loop_loss, loop = _meta_grads(maml, tasks, vectorize=False)
    vmap_loss, vmapped = _meta_grads(maml, tasks, vectorize=None)
    assert vmap_loss == pytest.approx(loop_loss, rel=1e-12)
    for a, b in zip(loop, vmapped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
