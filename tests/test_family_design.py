"""Design in real prototype families: slots, the site decoder, substituted cells, the fill loop, the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from tests.conftest import require_shared, shared_data_dir


def rocksalt(a: str, b: str, lattice: float) -> Structure:
    """Conventional rock-salt cell (8 atoms): A on 4a, B on 4b of Fm-3m."""
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    shifted = [[x + 0.5 if i == 0 else x for i, x in enumerate(p)] for p in fcc]
    return Structure(Lattice.cubic(lattice), [a] * 4 + [b] * 4, fcc + [[x % 1 for x in p] for p in shifted])


def records(structures):
    from matmeta.prototypes import prototype, structure_arrays

    out = []
    for i, s in enumerate(structures):
        lattice, frac, numbers = structure_arrays(s)
        out.append((f"x-{i}", prototype(s), frac, lattice, numbers, -1.0 - i, 0.5 * i))
    return out


def test_slot_keys_of_rocksalt_put_the_cation_first():
    from matmeta.design.family_table import slot_keys
    from matmeta.prototypes import structure_arrays

    lattice, frac, numbers = structure_arrays(rocksalt("Cl", "Na", 5.64))  # chloride listed first on purpose
    keys = slot_keys(frac, lattice, numbers)
    assert [k[0] for k in keys] == [1, 1]
    assert [k[1] for k in keys] == ["m-3m", "m-3m"]  # site symmetries: the same whichever species is at 4a
    assert [k[2] for k in keys] == [11, 17]  # same amount: the less electronegative species is slot 0


def test_build_families_groups_members_and_drops_small_families():
    from matmeta.design.family_table import build_families

    cells = [rocksalt("Na", "Cl", 5.64), rocksalt("K", "Cl", 6.29), rocksalt("Mg", "O", 4.21)]
    families = build_families(records(cells), min_members=3)
    assert list(families) == ["AB_225_ab"]
    family = families["AB_225_ab"]
    assert family.amounts == (1, 1)
    assert [m.slots for m in family.members] == [(11, 17), (19, 17), (12, 8)]
    assert build_families(records(cells), min_members=4) == {}
    features = family.slot_features()
    assert features.shape == (2, 4)
    np.testing.assert_allclose(features[:, 0], [0.5, 0.5])


def test_site_decoder_with_zero_weights_is_uniform_over_unused_elements(one_torch_thread):
    from matmeta.models.site_decoder import SiteDecoder, SiteDecoderConfig, condition, nll_per_example

    model = SiteDecoder(SiteDecoderConfig(elements=[3, 8, 11, 17, 19], hidden=8, embed=4))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    slots = torch.zeros(2, 5, 4)
    one = torch.ones(2)
    cond = condition(one, one, 0 * one, 0 * one, 2.0)
    targets = torch.tensor([[0, 1, 2, -1, -1], [4, 3, -1, -1, -1]])
    logits = model(slots, cond, targets)
    assert logits[0, 1, 0] < -1e3 and logits[0, 2, 1] < -1e3  # an element already placed is masked
    expected = [math.log(5) + math.log(4) + math.log(3), math.log(5) + math.log(4)]
    np.testing.assert_allclose(nll_per_example(logits, targets).detach().numpy(), expected, rtol=1e-5)


def test_condition_null_zeros_the_gap():
    from matmeta.models.site_decoder import condition

    c = condition(torch.tensor([3.0, 3.0]), torch.ones(2), torch.ones(2), torch.tensor([0.0, 1.0]), 2.0)
    np.testing.assert_allclose(c.numpy(), [[1.5, 1, 1, 0], [0, 0, 0, 1]])


def test_substituted_cell_keeps_the_prototype_and_scales_by_radius_cubes():
    from matmeta.design.family_cells import atomic_radius, substituted
    from matmeta.prototypes import prototype

    template = rocksalt("Na", "Cl", 5.64)
    cell = substituted(template, (11, 17), (19, 35))
    assert cell.composition.reduced_formula == "KBr"
    ratio = (atomic_radius(19) ** 3 + atomic_radius(35) ** 3) / (atomic_radius(11) ** 3 + atomic_radius(17) ** 3)
    assert cell.volume == pytest.approx(template.volume * ratio, rel=1e-9)
    assert prototype(cell) == prototype(template) == "AB_225_ab"


class FakePredictor:
    """Gap = 1 eV per unit of the first slot's atomic number mod 5; formation energy -1 eV/atom."""

    def predict_structures(self, structures):
        rows = []
        for s in structures:
            z = max(site.specie.Z for site in s if site.specie.Z not in (8, 9, 16, 17, 35))
            gap = float(z % 5)
            rows.append({"band_gap": gap, "band_gap_pbe": gap / 2, "formation_energy_per_atom": -1.0})
        return rows


class FakeHull:
    def known_formulas(self):
        return {"NaCl"}

    def e_above_hull(self, composition, energy):
        return energy + 1.05  # every candidate 0.05 eV/atom above its hull


def test_fill_counts_the_funnel_and_stops_at_n():
    from matmeta.design.family_design import FamilyRequest, fill, list_proposer
    from matmeta.design.family_table import build_families

    cells = [rocksalt("Na", "Cl", 5.64), rocksalt("K", "Cl", 6.29), rocksalt("Rb", "Cl", 6.6)]
    family = build_families(records(cells), min_members=1)["AB_225_ab"]
    templates = {m.material_id: c for m, c in zip(family.members, cells, strict=True)}
    proposals = [(11, 17), (11, 17), (19, 17), (37, 17), (55, 17), (3, 17), (11, 11), (20, 17)]
    request = FamilyRequest(window=(1.5, 2.5), n=2, batch=4)
    result = fill(
        family, list_proposer(proposals), lambda m: templates[m.material_id], FakePredictor(), FakeHull(), request
    )
    # batch 1: NaCl twice (one distinct, known) + KCl (Z 19 -> gap 4) + RbCl (Z 37 -> gap 2: hit)
    # batch 2: CsCl (55 -> 0: metal), LiCl (3 -> 3), Na on both slots (not distinct species), CaCl (charge: not neutral)
    assert result.counts["drawn"] == 8
    assert result.counts["distinct"] == 6
    assert result.counts["novel"] == 5
    assert [r["formula"] for r in result.rows] == ["RbCl"]
    assert result.rows[0]["e_above_hull_pred"] == pytest.approx(0.05)
    strict = FamilyRequest(window=(1.5, 2.5), n=2, batch=4, hull_cut=0.01)
    none = fill(
        family, list_proposer(proposals), lambda m: templates[m.material_id], FakePredictor(), FakeHull(), strict
    )
    assert none.rows == [] and none.counts["in_window"] == 1


def test_rediscovery_table_ratio():
    from matmeta.bench.generate_families import rediscovery_table

    rows = [
        {"method": "decoder adapted on 5", "found": 6, "held_out": 50, "proposed": 100},
        {"method": "random substitution", "found": 1, "held_out": 50, "proposed": 100},
    ]
    table = {r["method"]: r for r in rediscovery_table(rows)}
    assert table["decoder adapted on 5"]["rate"] == pytest.approx(0.12)
    assert table["decoder adapted on 5"]["x_random"] == pytest.approx(6.0)


def test_shipped_decoder_adapts_toward_its_examples(one_torch_thread):
    from matmeta.design.family_decoder import FamilyDecoder
    from matmeta.design.family_table import build_families

    decoder = FamilyDecoder.load()
    cells = [
        rocksalt(a, b, x) for a, b, x in [("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Na", "Br", 5.97), ("K", "I", 7.07)]
    ]
    family = build_families(records(cells), min_members=1)["AB_225_ab"]
    fast = decoder.adapt(family, family.members)
    before = decoder.log_likelihood(family, {}, [m.slots for m in family.members])
    after = decoder.log_likelihood(family, fast, [m.slots for m in family.members])
    assert after.mean() > before.mean()
    draws = decoder.sample(family, fast, 3.0, False, 50, torch.Generator().manual_seed(0))
    assert all(len(set(d)) == 2 for d in draws)


def test_other_checkpoint_kinds_are_refused():
    from matmeta.design.family_decoder import FamilyDecoder
    from matmeta.design.train import DEFAULT_CHECKPOINT
    from matmeta.errors import CheckpointError

    with pytest.raises(CheckpointError, match="family_generator"):
        FamilyDecoder.load(DEFAULT_CHECKPOINT)


def _generate(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "MATMETA_SHARED_DATA": str(shared_data_dir())}
    return subprocess.run(
        [sys.executable, "-m", "matmeta.cli", "generate", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_generate_from_family_examples_end_to_end(tmp_path):
    """Rock-salt examples -> candidates with valid CIFs, charge-neutral, no atoms closer than 0.5 A, relaxed."""
    require_shared("mp/mp36k.csv")
    examples = tmp_path / "examples"
    examples.mkdir()
    for a, b, x in [("Na", "Cl", 5.64), ("K", "Cl", 6.29), ("Mg", "O", 4.21), ("Ca", "O", 4.81)]:
        rocksalt(a, b, x).to(filename=str(examples / f"{a}{b}.cif"))
    out = tmp_path / "out"
    args = ["generate", "--family-examples", str(examples), "--band-gap", "1:6", "-n", "2", "--out", str(out)]
    result = _generate(*args[1:], "--max-draws", "2000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "AB_225_ab (adapted on 4 examples)" in result.stdout
    import csv

    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert 1 <= len(rows) <= 2
    for row in rows:
        generated = Structure.from_file(out / f"{int(row['rank']):03d}_{row['formula']}_generated.cif")
        assert generated.composition.reduced_formula == row["formula"]
        assert float(row["min_distance_ang"]) >= 0.5
        assert row["charge_neutral"] == "True"
        assert row["formula"] not in {"NaCl", "KCl", "MgO", "CaO"}
        assert math.isfinite(float(row["e_above_hull_chgnet"]))


def test_generate_with_mixed_examples_names_the_prototypes(tmp_path):
    require_shared("mp/mp36k.csv")
    examples = tmp_path / "examples"
    examples.mkdir()
    rocksalt("Na", "Cl", 5.64).to(filename=str(examples / "a.cif"))
    rocksalt("K", "Cl", 6.29).to(filename=str(examples / "b.cif"))
    Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(examples / "c.cif"))
    result = _generate("--family-examples", str(examples), "--band-gap", "2", "--no-relax", cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 prototypes (AB_221_ab, AB_225_ab)" in lines[0]
