"""``matmeta explain`` / ``matmeta jmak explain`` and their library functions, end to end on small models."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- JMAK


@pytest.fixture
def jmak_prior(tmp_path):
    from matmeta.checkpoint import save_checkpoint
    from matmeta.kinetics.prior import PriorConfig, build_maml
    from matmeta.recipes import config_to_dict

    config = PriorConfig(inner_lr=1.0, inner_steps=20, noise=0.02)  # explicit, not the tuned defaults
    maml = build_maml(config)
    path = tmp_path / "prior.ckpt"
    save_checkpoint(path, maml.state_dict(), {"kind": "jmak", "model_config": config_to_dict(config)})
    return path


def _points_csv(path):
    # curve a follows n = 2, t50 = 30 s except the point at 40 s (X should be ~0.83, reads 0.20);
    # curve b is clean; curve c has an impossible fraction.
    rows = [("a", t, 1 - math.exp(-math.log(2) * (t / 30.0) ** 2)) for t in (10, 20, 30, 50, 70)]
    rows.insert(3, ("a", 40, 0.20))
    rows += [("b", t, 1 - math.exp(-math.log(2) * (t / 2.0) ** 1.5)) for t in (1, 2, 3, 5)]
    rows += [("c", 5, 1.5), ("c", 6, 0.5)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["curve", "time_s", "fraction"])
        writer.writerows(rows)
    return path


def test_jmak_explain_cli(tmp_path, jmak_prior):
    from matmeta.cli import app

    points = _points_csv(tmp_path / "points.csv")
    out, plot = tmp_path / "infl.csv", tmp_path / "infl.png"
    result = CliRunner().invoke(
        app, ["jmak", "explain", str(points), "--prior", str(jmak_prior), "--out", str(out), "--plot", str(plot)]
    )
    assert result.exit_code == 1, result.output  # curve c is bad; a and b are still explained
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "curve 'c'" in output and "outside [0, 1]" in output
    assert "a t50" in output and "b t50" in output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 + 4
    a_rows = [r for r in rows if r["query"] == "a t50"]
    assert [int(r["rank"]) for r in a_rows] == list(range(1, 7))
    # the wrong point drags t50 later (X too low at 40 s): it is the most influential, with a positive influence
    assert "t=40s" in a_rows[0]["support"] and float(a_rows[0]["influence_loo"]) > 0
    assert plot.stat().st_size > 1000


def test_explain_curve_prediction_is_the_jmak_fit(jmak_prior):
    from matmeta.explain.adapters import explain_curve
    from matmeta.kinetics.fit import fit_maml
    from matmeta.kinetics.prior import load_prior

    maml, _ = load_prior(jmak_prior)
    t = np.array([3.0, 7.0, 12.0, 25.0])
    x = np.array([0.05, 0.31, 0.62, 0.93])
    explanation = explain_curve(maml, t, x, noise=0.02, name="s1")
    fits = fit_maml(maml, torch.tensor(t)[None], torch.tensor(x)[None], torch.ones(1, 4), noise=0.02)
    assert explanation.predictions[0] == pytest.approx(float(fits.ln_time_at(0.5).exp()[0]), rel=1e-4)
    assert np.all(np.isfinite(explanation.loo)) and explanation.spearman[0] > 0.7


# ------------------------------------------------------------------------------------ predictor


def _tiny_predictor(tmp_path):
    from matmeta import __version__
    from matmeta.checkpoint import save_checkpoint
    from matmeta.graphs import GraphConfig
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.config import MAMLSettings, build_maml
    from matmeta.predict.data import TargetStats
    from matmeta.recipes import config_to_dict

    torch.manual_seed(0)
    model_config = GNNConfig(hidden=16, layers=1, n_rbf=8, dropout=0.0)
    settings = MAMLSettings(inner_lr=0.05, inner_steps=3, learn_inner_lr=False)
    maml = build_maml(model_config, settings)
    metadata = {
        "kind": "predictor",
        "model_class": "CrystalGNN",
        "model_config": config_to_dict(model_config),
        "graph_config": GraphConfig().to_dict(),
        "maml": config_to_dict(settings),
        "targets": {
            "names": ["heat_ref", "band_gap"],
            "stats": TargetStats(-0.4, 0.3, 2.0, 1.0).to_dict(),
        },
        "elements_seen": [8, 20, 22, 38, 56],
        "matmeta_version": __version__,
    }
    path = tmp_path / "tiny.ckpt"
    save_checkpoint(path, maml.state_dict(), metadata)
    return path


def _perovskites():
    from pymatgen.core import Lattice, Structure

    out = {}
    for a_site, a in (("Sr", 3.905), ("Ba", 4.00), ("Ca", 3.84), ("Sr", 3.95), ("Ba", 4.05), ("Ca", 3.88)):
        out[f"{a_site}TiO3_{a}"] = Structure(
            Lattice.cubic(a),
            [a_site, "Ti", "O", "O", "O"],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        )
    return out


def test_explain_structures_matches_finetune_loo(tmp_path):
    from matmeta.explain.adapters import explain_structures
    from matmeta.predict.predictor import Predictor

    predictor = Predictor.load(_tiny_predictor(tmp_path))
    structures = list(_perovskites().values())
    values = [-1.8, -2.0, -1.6, -1.9, -2.1, -1.7]
    explanation = explain_structures(predictor, structures[:5], values[:5], structures[5:], "heat_ref")
    _, report = predictor.finetune(structures[:5], values[:5], "heat_ref")
    # own LOO loss = ((prediction_without_i − value_i) / (σ · n_atoms))², the finetune LOO residual
    residual = np.sqrt(explanation.loo_loss) * 0.3 * 5
    np.testing.assert_allclose(residual, np.abs(np.array(report.loo_predictions) - values[:5]), rtol=1e-4, atol=1e-6)
    assert explanation.loo.shape == (5, 1) and explanation.approx.shape == (5, 1)


def test_explain_cli_flags_a_wrong_measurement(tmp_path):
    from matmeta.cli import app
    from matmeta.io import structure_to_cif

    checkpoint = _tiny_predictor(tmp_path)
    structures = _perovskites()
    names = list(structures)
    support = tmp_path / "support.csv"
    values = [-1.8, -2.0, -1.6, 8.0, -2.1]  # the 4th is a gross error
    with support.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "cif", "heat_ref"])
        for name, value in zip(names[:5], values, strict=True):
            writer.writerow([name, structure_to_cif(structures[name]), value])
        writer.writerow(["broken", structure_to_cif(structures[names[0]]), "n/a"])
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "q1.cif").write_text(structure_to_cif(structures[names[5]]))
    (queries / "q2.cif").write_text(structure_to_cif(structures[names[0]]))
    out = tmp_path / "influence.csv"
    result = CliRunner().invoke(
        app,
        [
            "explain",
            "--model",
            str(checkpoint),
            "--target",
            "heat_ref",
            "--support",
            str(support),
            "--query",
            str(queries),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1, result.output  # the broken row is reported, the rest explained
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "is not a number" in output
    assert f"check this measurement: {names[3]}" in output
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 2 and {r["query"] for r in rows} == {"q1", "q2"}
    flagged = {r["support"] for r in rows if r["check"]}
    assert flagged == {names[3]}


def test_explain_cli_refuses_too_few_support_points(tmp_path):
    from matmeta.cli import app
    from matmeta.io import structure_to_cif

    structures = _perovskites()
    support = tmp_path / "support.csv"
    name = next(iter(structures))
    support.write_text(f'name,cif,heat_ref\n{name},"{structure_to_cif(structures[name])}",-1.0\n')
    query = tmp_path / "q.cif"
    query.write_text(structure_to_cif(structures[name]))
    result = CliRunner().invoke(
        app,
        [
            "explain",
            "--model",
            str(_tiny_predictor(tmp_path)),
            "--target",
            "heat_ref",
            "--support",
            str(support),
            "--query",
            str(query),
        ],
    )
    assert result.exit_code != 0
    assert "explain needs ≥ 2" in str(result.exception)


def test_unreadable_queries_are_refused_by_name_before_the_support_is_read(tmp_path, monkeypatch):
    from matmeta.cli import app
    from matmeta.errors import MatmetaInputError
    from matmeta.explain import adapters

    broken, missing = tmp_path / "broken.cif", tmp_path / "missing.cif"
    broken.write_text("data_x\n_cell_length_a 4\n")
    read: list = []
    monkeypatch.setattr(adapters, "read_support", lambda *args: read.append(args))
    with pytest.raises(MatmetaInputError) as info:
        adapters.explain_support_file(
            tmp_path / "support.csv", [str(broken), str(missing)], model="perovskites", target="heat_ref"
        )
    message = str(info.value)
    assert message.startswith(f"--query {broken}, {missing}: no readable structure ({broken}: ")
    assert message.endswith("; 1 more unreadable)") and "\n" not in message
    assert read == []  # refused before any work: the support CSV was never read
    unwritable = CliRunner().invoke(
        app,
        [
            "explain",
            "--support",
            "s.csv",
            "--query",
            str(broken),
            "--model",
            "perovskites",
            "--target",
            "heat_ref",
            "--out",
            "/proc/x.csv",
        ],  # fmt: skip
    )
    assert "/proc/x.csv: cannot write" in str(unwritable.exception) and read == []


def test_bench_quick_runs_and_writes_episodes(tmp_path):
    from matmeta.runs import bench as run_bench

    recipe = tmp_path / "explain.toml"
    recipe.write_text(
        f'[bench]\nname = "explain"\n[explain]\ntasks = ["jmak", "sine"]\nout_dir = "{tmp_path / "out"}"\n'
    )
    run_bench(recipe, quick=True)
    with (tmp_path / "out" / "episodes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    methods = {(r["task"], r["method"]) for r in rows}
    assert ("sine", "exact LOO (vmap)") in methods and ("jmak", "through loop") in methods
    assert ("jmak", "exact LOO (vmap)") not in methods  # not exact for a loss that shares the prior
    sine_vmap = [float(r["spearman"]) for r in rows if r["task"] == "sine" and r["method"] == "exact LOO (vmap)"]
    assert min(sine_vmap) > 0.99
