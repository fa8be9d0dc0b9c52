"""The jointly trained ensemble of JMAK priors: members, averaged curves, its meta-loss and the shipped one."""

import tomllib
from pathlib import Path

import pytest
import torch

from matmeta.errors import CheckpointError
from matmeta.kinetics.ensemble import EnsembleFits, EnsembleMAML, member_offsets, warm_start
from matmeta.kinetics.fit import Fits, fit_maml, loss_fn
from matmeta.kinetics.prior import PriorConfig, SyntheticEpisodes, build_maml, load_prior, meta_train_from_recipe
from matmeta.kinetics.synthetic import SyntheticConfig, make_corpus, true_fraction, truth_grid

REPO = Path(__file__).resolve().parents[1]
BENCH = SyntheticConfig(n_range=(1.0, 3.5), n_jitter=0.0, log10_t50_range=(0.0, 4.0), window=(0.3, 2.5))


def _fits(ln_k, n):
    t = torch.tensor
    return Fits(t(ln_k, dtype=torch.float64), t(n, dtype=torch.float64), torch.zeros(len(n), dtype=torch.float64),
                torch.ones(len(n), dtype=torch.bool))  # fmt: skip


def test_members_start_apart_and_warm_start_moves_n_only():
    assert member_offsets(3, 0.6) == pytest.approx([-0.6, 0.0, 0.6])
    assert member_offsets(1, 0.6) == [0.0]
    ens = build_maml(PriorConfig(ensemble=3, ensemble_spread=0.5, init_n=2.0))
    assert isinstance(ens, EnsembleMAML)
    assert [float(m.model.n.detach()) for m in ens.members] == pytest.approx([1.5, 2.0, 2.5])
    single = build_maml(PriorConfig(init_n=2.2, init_ln_k=-1.0))
    warm_start(ens, single, 0.5)
    assert [float(m.model.n.detach()) for m in ens.members] == pytest.approx([1.7, 2.2, 2.7])
    assert [float(m.model.prior_mean[1].detach()) for m in ens.members] == pytest.approx([1.7, 2.2, 2.7])
    assert all(float(m.model.ln_k.detach()) == pytest.approx(-1.0) for m in ens.members)


def test_ensemble_curve_is_the_mean_and_its_times_invert_it():
    fits = EnsembleFits([_fits([0.0, -2.0], [1.0, 3.0]), _fits([1.0, -1.0], [2.0, 1.5])])
    t = torch.tensor([[0.5, 2.0], [1.0, 3.0]], dtype=torch.float64)
    expected = 0.5 * (fits.members[0].predict(t) + fits.members[1].predict(t))
    assert torch.allclose(fits.predict(t), expected)
    for x in (0.1, 0.5, 0.9):
        ln_t = fits.ln_time_at(x)
        assert torch.allclose(fits.predict(ln_t.exp()[:, None])[:, 0], torch.full((2,), x, dtype=torch.float64))
        member_times = torch.stack([f.ln_time_at(x) for f in fits.members])
        assert bool(((ln_t >= member_times.min(0).values) & (ln_t <= member_times.max(0).values)).all())
    # the mixture of two different curves is not one JMAK curve: its own t50 differs from the members' mean
    member_mean = torch.stack([f.ln_time_at(0.5) for f in fits.members]).mean(0)
    assert abs(float(fits.ln_time_at(0.5)[0] - member_mean[0])) > 1e-3


def test_meta_loss_is_the_error_of_the_averaged_adapted_curves():
    cfg = PriorConfig(ensemble=2, inner_steps=5, window_prior=True)
    ens = build_maml(cfg).double()
    ens.eval()
    synth = SyntheticConfig(points_range=(2, 2))
    tasks = SyntheticEpisodes(synth, cfg).sample(16, torch.Generator().manual_seed(4))
    tasks = [({k: v.double() for k, v in s.items()}, {k: v.double() for k, v in q.items()}) for s, q in tasks]
    loss = float(ens.meta_loss(tasks, loss_fn))
    support = {k: torch.stack([s[k] for s, _ in tasks]) for k in tasks[0][0]}
    query = {k: torch.stack([q[k] for _, q in tasks]) for k in tasks[0][1]}
    preds = []
    for member in ens.members:
        start = {n: p.detach().reshape(1, 1).expand(16, 1).clone() for n, p in member.meta_parameters().items()
                 if n in member.adapt_names}  # fmt: skip
        fast = member.adapt(support, loss_fn, params=start)
        preds.append(member.functional(fast)(query["log_t"])[0])
    manual = ((torch.stack(preds).mean(0) - query["x"]) ** 2).mean(1).mean()
    assert loss == pytest.approx(float(manual), rel=1e-6)
    assert loss > 0


def test_ensemble_recipe_warm_starts_and_trains(tmp_path):
    single = tmp_path / "single.ckpt"
    base = {"meta_train": {"app": "jmak"}, "prior": {"inner_steps": 3}, "synthetic": {"points_range": [2, 2]},
            "trainer": {"outer_steps": 2, "meta_batch_size": 8, "val_every": 2, "val_batches": 1}}  # fmt: skip
    meta_train_from_recipe(base, tmp_path / "a.toml", out=single)
    recipe = {**base, "meta_train": {"app": "jmak", "init_from": str(single)},
              "prior": {"inner_steps": 3, "ensemble": 3, "ensemble_spread": 0.4}}  # fmt: skip
    out = meta_train_from_recipe(recipe, tmp_path / "b.toml", out=tmp_path / "ens.ckpt")
    ens, metadata = load_prior(out)
    assert isinstance(ens, EnsembleMAML) and len(ens.members) == 3
    assert metadata["init_from"] == str(single)
    n = [float(m.model.n.detach()) for m in ens.members]
    assert n[0] < n[1] < n[2] and n[2] - n[0] > 0.4  # apart from the start on (two small steps move little)


def test_shipped_ensemble_beats_its_single_start_on_validation_curves():
    recipe = tomllib.loads((REPO / "recipes" / "jmak_2pt_ensemble.toml").read_text())
    ckpt = REPO / recipe["meta_train"]["checkpoint"]
    assert ckpt.stat().st_size < 20e6
    ens, metadata = load_prior(ckpt)
    single, _ = load_prior(REPO / recipe["meta_train"]["init_from"])
    assert len(ens.members) == metadata["model_config"]["ensemble"] == 5
    corpus = make_corpus(150, 4, BENCH, seed=4242, points=2)  # validation seed, not the benchmark's
    grid = truth_grid(corpus.ln_k, corpus.n)
    truth = true_fraction(corpus.ln_k, corpus.n, grid)

    def mse(prior):
        fits = fit_maml(prior, corpus.time_s, corpus.fraction, corpus.mask, 0.02)
        assert bool(fits.ok.all())
        return float((fits.predict(grid) - truth).pow(2).mean())

    assert mse(ens) < 0.95 * mse(single)


def test_plain_fit_refuses_an_ensemble_prior():
    from matmeta.kinetics.api import fit_curves
    from matmeta.kinetics.data import Curve

    ens = build_maml(PriorConfig(ensemble=2))
    curve = Curve("a", [1.0, 2.0, 4.0], [0.2, 0.5, 0.8])
    with pytest.raises(CheckpointError, match="ensemble"):
        fit_curves([curve], method="maml", maml=ens)
