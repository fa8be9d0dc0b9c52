import math

import torch

from matmeta.models.jmak import JMAK, LN_LN2, fraction_from_z, log_time_at_fraction, physical_ln_k


def test_half_transformed_at_t50():
    n, ln_t50 = 2.5, math.log(40.0)
    model = JMAK().double()
    with torch.no_grad():
        model.ln_k.fill_(LN_LN2 - n * ln_t50)
        model.n.fill_(n)
        x, _ = model(torch.tensor([ln_t50, ln_t50 + math.log(2.0)], dtype=torch.float64))
        assert abs(float(x[0]) - 0.5) < 1e-12
        # X(2·t50) = 1 − 2^(−2^n)
        assert abs(float(x[1]) - (1 - 2 ** -(2**n))) < 1e-12
        assert abs(float(log_time_at_fraction(model.ln_k, model.n, 0.5)) - ln_t50) < 1e-12


def test_gradients_match_finite_differences():
    model = JMAK(ln_k=-0.3, n=1.7).double()
    log_t = torch.linspace(-2.0, 2.0, 7, dtype=torch.float64)

    def f(ln_k, n):
        return fraction_from_z(ln_k + n * log_t)

    assert torch.autograd.gradcheck(
        f, (model.ln_k.detach().clone().requires_grad_(), model.n.detach().clone().requires_grad_())
    )
    # analytic: dX/dz = exp(z − e^z)
    ln_k = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    x = f(ln_k, torch.tensor(1.7, dtype=torch.float64)).sum()
    (grad,) = torch.autograd.grad(x, ln_k)
    z = -0.3 + 1.7 * log_t
    assert torch.allclose(grad, torch.exp(z - torch.exp(z)).sum())


def test_prior_penalty_is_half_mahalanobis():
    model = JMAK(ln_k=0.0, n=2.0, prior_std=(1.5, 0.5)).double()
    with torch.no_grad():
        model.prior_offdiag.fill_(0.3)
        model.ln_k.fill_(0.7)
        model.n.fill_(1.2)
    _, penalty = model(torch.zeros(3, dtype=torch.float64))
    d = torch.tensor([0.7, -0.8], dtype=torch.float64)
    prec = model.prior_precision()
    assert torch.allclose(penalty, 0.5 * d @ prec @ d)
    assert torch.allclose(prec, prec.T) and bool((torch.linalg.eigvalsh(prec) > 0).all())
    assert abs(float(prec[1, 1].detach()) - (0.3**2 + 1 / 0.25)) < 1e-6  # prior_std stored in float32


def test_batched_fast_weights_broadcast_and_never_nan():
    model = JMAK()
    params = {"ln_k": torch.tensor([[0.0], [50.0], [-50.0]]), "n": torch.tensor([[1.0], [4.0], [0.5]])}
    log_t = torch.tensor([[-1e3, 0.0, 1e3]]).expand(3, 3).clone().requires_grad_()
    x, penalty = torch.func.functional_call(model, {**dict(model.named_parameters()), **params}, (log_t,))
    assert x.shape == (3, 3) and penalty.shape == (3, 1)
    assert bool(torch.isfinite(x).all()) and bool(((x >= 0) & (x <= 1)).all())
    (grad,) = torch.autograd.grad(x.sum() + penalty.sum(), log_t)
    assert bool(torch.isfinite(grad).all())


def test_physical_ln_k():
    # k_norm in t_ref^-n units: k·t^n = k_norm·(t/t_ref)^n  →  ln k = ln k_norm − n ln t_ref
    ln_k = physical_ln_k(torch.tensor(0.2), torch.tensor(2.0), torch.tensor(math.log(10.0)))
    assert abs(float(ln_k) - (0.2 - 2 * math.log(10.0))) < 1e-6
