"""matmeta.explain on synthetic models: closed forms, derivatives, duplicates, corrupted labels."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from matmeta.errors import MatmetaError
from matmeta.explain.influence import approx_from_weight_gradients, explain_adaptation, leave_one_out, weight_gradients
from matmeta.explain.report import Table, robust_z, spearman
from matmeta.meta.maml import MAML

torch.set_num_threads(1)


# Items are (x, y) pairs: x (d,), y scalar.
def collate(items):
    xs = torch.stack([x for x, _ in items])
    ys = torch.stack([y for _, y in items])
    return xs, ys


def per_example_loss(forward, batch):
    xs, ys = batch
    return (forward(xs).squeeze(-1) - ys) ** 2


def make_query_fn(xq):
    return lambda forward: forward(xq).squeeze(-1)


def make_items(x, y):
    return [(x[i], y[i]) for i in range(x.shape[0])]


def mlp(d_in=1, hidden=32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def test_linear_one_step_loo_matches_closed_form():
    # f(x) = θᵀx + b, ℓ_i = (f(x_i) − y_i)², one step of size α from θ0:
    #   θ_all = θ0 − (2α/n) Σ_j r_j x̃_j,   θ_−i = θ0 − (2α/(n−1)) Σ_{j≠i} r_j x̃_j    (x̃ = [x, 1], r = f0(x) − y)
    #   ⇒ f_all(q) − f_−i(q) = 2α/(n−1) · (mean_j r_j k_qj − r_i k_qi),  k_qj = x̃_qᵀ x̃_j.
    torch.manual_seed(1)
    d, n, m, alpha = 3, 7, 4, 0.05
    model = nn.Linear(d, 1).double()
    maml = MAML(model, inner_lr=alpha, inner_steps=1)
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    xq = torch.randn(m, d, dtype=torch.float64)
    items = make_items(x, y)

    with torch.no_grad():
        r = (model(x).squeeze(-1) - y).numpy()
    xt = np.hstack([x.numpy(), np.ones((n, 1))])
    xqt = np.hstack([xq.numpy(), np.ones((m, 1))])
    k = xt @ xqt.T  # (n, m)
    rk = r[:, None] * k
    closed = 2 * alpha / (n - 1) * (rk.mean(axis=0, keepdims=True) - rk)

    predictions, loo, loo_loss = leave_one_out(maml, items, collate, per_example_loss, make_query_fn(xq))
    np.testing.assert_allclose(loo.numpy(), closed, rtol=1e-9, atol=1e-12)
    # The model is linear in the weights after one step, so the Taylor estimate is exact as well.
    for first_order in (False, True):
        _, grads = weight_gradients(maml, items, collate, per_example_loss, make_query_fn(xq), first_order=first_order)
        np.testing.assert_allclose(approx_from_weight_gradients(grads).numpy(), closed, rtol=1e-9, atol=1e-12)
    # Self-influence of point i: (f_−i(x_i) − y_i)² with the closed-form θ_−i.
    theta0 = np.concatenate([model.weight.detach().numpy()[0], model.bias.detach().numpy()])
    for i in range(n):
        keep = np.arange(n) != i
        theta = theta0 - 2 * alpha / (n - 1) * (r[keep, None] * xt[keep]).sum(axis=0)
        assert loo_loss[i].item() == pytest.approx((xt[i] @ theta - y[i].item()) ** 2, rel=1e-10)
    with torch.no_grad():
        theta_all = theta0 - 2 * alpha / n * (r[:, None] * xt).sum(axis=0)
    np.testing.assert_allclose(predictions.numpy(), xqt @ theta_all, rtol=1e-10)


def test_weight_gradients_match_finite_differences():
    model = mlp(seed=3).double()
    maml = MAML(model, inner_lr=0.1, inner_steps=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, generator=gen, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(6, generator=gen, dtype=torch.float64)
    xq = torch.tensor([[-1.0], [0.3], [1.7]], dtype=torch.float64)
    items = make_items(x, y)
    query_fn = make_query_fn(xq)
    _, grads = weight_gradients(maml, items, collate, per_example_loss, query_fn)
    _, grads_fo = weight_gradients(maml, items, collate, per_example_loss, query_fn, first_order=True)

    def predict_with_weights(w):
        def loss(forward, batch):
            return (w * per_example_loss(forward, batch)).mean()

        maml.eval()
        fast = maml.adapt(collate(items), loss)
        with torch.no_grad():
            return query_fn(maml.functional(fast))

    eps = 1e-5
    for i in range(len(items)):
        up, down = torch.ones(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
        up[i] += eps
        down[i] -= eps
        fd = (predict_with_weights(up) - predict_with_weights(down)) / (2 * eps)
        np.testing.assert_allclose(grads[i].numpy(), fd.numpy(), rtol=1e-5, atol=1e-9)
    # Four steps of a non-linear model: dropping the Hessian terms changes the derivative...
    assert not np.allclose(grads.numpy(), grads_fo.numpy(), rtol=1e-3)
    # ...but after one step there is no Hessian term yet: both are −(α/n) ∇f(θ_1)·∇ℓ_i(θ_0).
    _, one = weight_gradients(maml, items, collate, per_example_loss, query_fn, steps=1)
    _, one_fo = weight_gradients(maml, items, collate, per_example_loss, query_fn, steps=1, first_order=True)
    np.testing.assert_allclose(one.numpy(), one_fo.numpy(), rtol=1e-10, atol=1e-14)


def test_duplicated_support_points_get_equal_influence():
    model = mlp(seed=5)
    maml = MAML(model, inner_lr=0.05, inner_steps=5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, generator=gen) * 4 - 2
    y = torch.sin(x[:, 0]) + 0.5
    x = torch.cat([x[:3], x[2:3], x[3:]])  # item 2 twice, as items 2 and 3
    y = torch.cat([y[:3], y[2:3], y[3:]])
    xq = torch.tensor([[-1.5], [0.0], [1.2]])
    result = explain_adaptation(maml, make_items(x, y), collate, per_example_loss, make_query_fn(xq))
    np.testing.assert_array_equal(result.loo[2], result.loo[3])
    np.testing.assert_allclose(result.approx[2], result.approx[3], rtol=1e-5, atol=1e-8)
    assert result.loo_loss[2] == result.loo_loss[3]
    assert np.abs(result.loo[2]).max() > 1e-4  # and they do matter
    # Removing one copy of a duplicate halves its weight rather than removing it: the other points differ.
    assert not np.allclose(result.loo[2], result.loo[1])


def _sine_family(gen, n):
    amplitude = 0.5 + 1.5 * torch.rand((), generator=gen)
    phase = math.pi * torch.rand((), generator=gen)
    x = torch.rand(n, 1, generator=gen) * 10 - 5
    return x, amplitude * torch.sin(x[:, 0] + phase)


def _meta_trained_sine_maml(steps=300):
    """A small MAML on sinusoid families (Finn et al. 2017, §5.1), trained for a few hundred steps."""
    maml = MAML(mlp(hidden=40, seed=0), inner_lr=0.02, inner_steps=5)
    optimizer = torch.optim.Adam(maml.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tasks = []
        for _ in range(8):
            x, y = _sine_family(gen, 20)
            tasks.append(((x[:10], y[:10]), (x[10:], y[10:])))
        loss = maml.meta_loss(tasks, lambda f, b: per_example_loss(f, b).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return maml


@pytest.fixture(scope="module")
def sine_maml():
    return _meta_trained_sine_maml()


def test_corrupted_label_is_ranked_first_by_self_influence(sine_maml):
    gen = torch.Generator().manual_seed(11)
    hits = 0
    for _ in range(5):
        x, y = _sine_family(gen, 10)
        bad = int(torch.randint(10, (1,), generator=gen))
        y = y.clone()
        y[bad] += 4.0  # a gross measurement error (the amplitudes are 0.5–2)
        names = [f"m{i}" for i in range(10)]
        result = explain_adaptation(
            sine_maml, make_items(x, y), collate, per_example_loss, make_query_fn(x[:2]), support_names=names
        )
        table = result.self_influence
        assert table[0].support == f"m{bad}"
        assert table[0].flagged and result.flagged[0] == f"m{bad}"
        hits += len(result.flagged) == 1
    assert hits >= 4  # clean points are rarely flagged too


def test_clean_family_flags_nothing_and_approx_ranks_like_loo(sine_maml):
    gen = torch.Generator().manual_seed(4)
    correlations, flagged = [], 0
    for _ in range(6):
        x, y = _sine_family(gen, 13)
        result = explain_adaptation(
            sine_maml, make_items(x[:10], y[:10]), collate, per_example_loss, make_query_fn(x[10:])
        )
        flagged += len(result.flagged)
        correlations.extend(result.spearman)
    assert flagged <= 1
    assert np.mean(correlations) > 0.9


def test_batched_leave_one_out_equals_the_loop(sine_maml):
    gen = torch.Generator().manual_seed(7)
    x, y = _sine_family(gen, 12)
    args = (sine_maml, make_items(x[:9], y[:9]), collate, per_example_loss, make_query_fn(x[9:]))
    predictions, loo, loo_loss = leave_one_out(*args)
    predictions_b, loo_b, loo_loss_b = leave_one_out(*args, batched=True)
    assert torch.equal(predictions, predictions_b)
    np.testing.assert_allclose(loo_b.numpy(), loo.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loo_loss_b.numpy(), loo_loss.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(loo.numpy()).max() > 1e-2


def test_training_flag_and_meta_parameters_untouched(sine_maml):
    before = {k: v.clone() for k, v in sine_maml.state_dict().items()}
    sine_maml.train()
    for p in sine_maml.parameters():
        p.grad = None
    gen = torch.Generator().manual_seed(0)
    x, y = _sine_family(gen, 5)
    explain_adaptation(sine_maml, make_items(x, y), collate, per_example_loss, make_query_fn(x[:1]))
    assert sine_maml.training
    assert all(p.grad is None for p in sine_maml.parameters())
    for k, v in sine_maml.state_dict().items():
        assert torch.equal(v, before[k])


def test_influence_table_and_csv(tmp_path):
    torch.manual_seed(0)
    maml = MAML(nn.Linear(2, 1), inner_lr=0.1, inner_steps=2)
    x, y = torch.randn(4, 2), torch.randn(4)
    xq = torch.randn(2, 2)
    result = explain_adaptation(
        maml, make_items(x, y), collate, per_example_loss, make_query_fn(xq), query_names=["qa", "qb"]
    )
    table = result.influence
    assert len(table) == 8 and table.columns[0] == "query"
    for query in ("qa", "qb"):
        rows = [r for r in table if r.query == query]
        assert [r.rank for r in rows] == [1, 2, 3, 4]
        magnitudes = [abs(r.influence_loo) for r in rows]
        assert magnitudes == sorted(magnitudes, reverse=True)
        for r in rows:
            assert r.prediction - r.prediction_without == pytest.approx(r.influence_loo)
    path = result.to_csv(tmp_path / "out" / "influence.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 8
    assert float(read[0]["influence_loo"]) == table[0].influence_loo
    assert table["support"][:4] == [r.support for r in table.rows[:4]]
    assert Table([]).columns == ()


def test_robust_z_and_spearman():
    from scipy.stats import spearmanr

    errors = np.array([0.1, 0.3, 0.2, 0.25, 0.15, 2.0])
    z = robust_z(errors)
    # median |e| = 0.225: z = 0.6745 |e| / 0.225
    np.testing.assert_allclose(z, 0.6745 * errors / 0.225)
    assert np.flatnonzero(z > 3.5).tolist() == [5]
    assert np.all(robust_z(np.zeros(5)) == 0)
    mostly_zero = np.array([0.0, 0.0, 0.0, 0.0, 5.0])  # median 0 → scale from the mean
    assert robust_z(mostly_zero)[4] == pytest.approx(0.7979 * 5.0 / 1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    b[3] = b[4]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert math.isnan(spearman(a, np.ones(12)))


def test_bad_inputs_are_refused():
    maml = MAML(nn.Linear(1, 1), inner_lr=0.1, inner_steps=1)
    items = make_items(torch.randn(3, 1), torch.randn(3))
    with pytest.raises(MatmetaError, match="at least 2 support points"):
        explain_adaptation(maml, items[:1], collate, per_example_loss, make_query_fn(torch.zeros(1, 1)))
    with pytest.raises(MatmetaError, match=r"shape \(3,\)"):
        explain_adaptation(
            maml, items, collate, lambda f, b: per_example_loss(f, b).mean(), make_query_fn(torch.zeros(1, 1))
        )
    with pytest.raises(MatmetaError, match="2 support names for 3"):
        explain_adaptation(maml, items, collate, per_example_loss, make_query_fn(torch.zeros(1, 1)), ["a", "b"])
