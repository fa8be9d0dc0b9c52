"""The measured-level band gap: the fidelity head, its loss, the finetune candidates, the data join, the rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _entry(in_features: int) -> dict:
    return {
        "model_config": {"in_features": in_features, "hidden": 8, "slope": 1.3, "shift": 0.4},
        "maml": {"inner_lr": 0.01, "inner_steps": 3, "adapt_steps": 4, "learn_inner_lr": True, "per_element_lr": True},
        "families": {"by": "cation", "train": [], "val": [], "test": []},
        "uncertainty": {
            "nonmetal_threshold": 0.5,
            "zero_shot": {"called": 0.6, "uncalled": 0.2},
            "adapted": {"5": {"called": 0.4, "uncalled": 0.1}},
        },  # fmt: skip
    }


def _with_head():
    from matmeta.models.gnn import GNNConfig
    from matmeta.predict.predictor import Predictor, build_head
    from matmeta.predict.train import untrained_predictor

    base = untrained_predictor(GNNConfig(hidden=16, layers=2, n_rbf=8, composition_features=True))
    base.metadata["targets"]["names"] = ["formation_energy_per_atom", "band_gap_pbe"]
    metadata = {**base.metadata, "measured_gap": _entry(16 + 6)}
    return Predictor(base.maml, metadata, None, measured=build_head(metadata["measured_gap"]))


def test_the_head_starts_as_a_linear_map_of_the_pbe_gap():
    from matmeta.models.fidelity import FidelityConfig, FidelityHead

    head = FidelityHead(FidelityConfig(in_features=5, hidden=4, slope=0.7, shift=1.2))
    x, gap, logit = torch.randn(6, 5), torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 5.0]), torch.randn(6)
    out = head(x, gap, logit)
    assert torch.allclose(out[:, 1], 0.7 * gap + 1.2) and torch.allclose(out[:, 0], logit)


def test_a_measured_metal_only_enters_the_metal_term():
    from matmeta.models.fidelity import FidelityConfig, FidelityHead
    from matmeta.predict.measured import per_row_loss

    head = FidelityHead(FidelityConfig(in_features=3, hidden=4))
    x, gap, logit = torch.zeros(2, 3), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])
    loss = per_row_loss(head, (x, gap, logit, torch.tensor([0.0, 3.0]), torch.ones(2)))
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(1.0)))
    assert loss[0].item() == pytest.approx(bce)  # the metal: BCE only, whatever its predicted gap
    assert loss[1].item() == pytest.approx(bce + (2.0 - 3.0) ** 2)  # slope 1, shift 0 at init


def test_finetune_keeps_the_recalibration_when_the_lab_is_a_linear_map_of_the_head():
    from matmeta.predict.measured import measured_outputs
    from matmeta.predict.measured_adapt import choose
    from matmeta.predict.predictor import build_head

    head = build_head(_entry(4))
    inputs = (torch.randn(8, 4), torch.linspace(0.5, 4.0, 8), torch.full((8,), -6.0))  # all called non-metals
    gap = measured_outputs(head, inputs)[:, 1]
    values = gap + 0.9  # a lab offset (the fit's slope is shrunk towards 1, the shift is not)
    _, entry, loo = choose(head, 0.5, inputs, values, steps=4)
    assert entry["kept"] == "recalibrated"
    assert entry["loo_mae"]["recalibrated"] < 0.05 < entry["loo_mae"]["unadapted"]
    assert np.allclose(loo["recalibrated"], values, atol=0.15)


def test_rows_carry_the_measured_gap_and_finetune_on_it_round_trips(tmp_path, nacl, cu, srtio3):
    from matmeta.predict.predictor import Predictor

    predictor = _with_head()
    rows = predictor.predict_structures([nacl, cu])
    for row in rows:
        assert {"band_gap", "band_gap_lo", "band_gap_hi", "p_metal_measured", "band_gap_pbe"} <= set(row)
        called_metal = row["p_metal_measured"] > 0.5
        assert (row["band_gap"] == 0.0) == called_metal or row["band_gap"] == 0.0
    structures = [nacl, cu, srtio3, nacl * (2, 1, 1), cu * (2, 1, 1)]
    adapted, report = predictor.finetune(structures, [8.5, 0.0, 3.25, 8.5, 0.0], "band_gap")
    assert report.target == "band_gap" and report.unit == "eV" and adapted.metadata["adapted"]["role"] == "measured_gap"
    again = Predictor.load(adapted.save(tmp_path / "lab.ckpt"))
    assert again.measured is not None
    first, second = adapted.predict_structures([srtio3]), again.predict_structures([srtio3])
    assert first[0]["band_gap"] == pytest.approx(second[0]["band_gap"], abs=1e-5)
    from matmeta.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"band_gap \(measured\)"):
        predictor.finetune(structures, [1.0] * 5, "heat_ref")


def test_measured_rows_join_structures_and_agree_on_repeats(tmp_path, nacl, cu):
    from matmeta.io import write_cif
    from matmeta.predict.measured_data import read_measured
    from matmeta.store.ingest import ingest
    from matmeta.store.reader import GraphStore

    folder = tmp_path / "cifs"
    folder.mkdir()
    write_cif(nacl, folder / "mp-1.cif")
    write_cif(cu, folder / "mp-2.cif")
    ingest([folder], tmp_path / "s.lmdb", workers=1, show_progress=False)
    csv_path = tmp_path / "expt.csv"
    csv_path.write_text(
        "source,formula,band_gap_expt,material_id,match\n"
        "a,NaCl,8.5,mp-1,mp_id\na,NaCl,8.7,mp-1,formula\n"  # two measurements of one structure: the mean
        "a,Cu,0,mp-2,mp_id\na,Cu,0,mp-2,mp_id\na,Cu,0.3,mp-2,mp_id\n"  # metal by majority
        "b,KBr,7.4,,\n"  # no structure: kept for the composition peer, its family from the formula
    )
    rows = read_measured(csv_path, GraphStore(tmp_path / "s.lmdb"), "cation")
    by = dict(zip(rows.formula, rows.gap.tolist(), strict=True))
    assert by == {"NaCl": pytest.approx(8.6), "Cu": 0.0, "KBr": 7.4}
    assert rows.family == ["Na", "Cu", "K"] and rows.store_index.tolist() == [0, 1, -1]
    assert rows.with_structure.tolist() == [0, 1]


def test_a_formula_without_a_structure_is_refused_or_matched_in_a_store(tmp_path, nacl):
    from matmeta.io import write_cif
    from matmeta.predict.support import read_support
    from matmeta.store.ingest import ingest

    support = tmp_path / "lab.csv"
    support.write_text("name,formula,band_gap\nrock salt,NaCl,8.5\nunknown,KBr,7.4\n")
    _, structures, _, bad = read_support(support, "band_gap", None, "path", "cif")
    assert not structures and "formula NaCl without a structure" in bad[0] and "--match-store" in bad[0]
    folder = tmp_path / "cifs"
    folder.mkdir()
    write_cif(nacl, folder / "mp-22862.cif")
    ingest([folder], tmp_path / "s.lmdb", workers=1, show_progress=False)
    names, structures, values, bad = read_support(support, "band_gap", None, "path", "cif",
                                                  match_store=tmp_path / "s.lmdb")  # fmt: skip
    assert names == ["rock salt"] and values == [8.5] and structures[0].composition.reduced_formula == "NaCl"
    assert len(bad) == 1 and "no structure of KBr" in bad[0]
