import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from matmeta.design.validity import (
    FingerprintScaler,
    ReferenceSet,
    composition_fingerprint,
    compositional_validity,
    coverage,
    judge_candidates,
    min_distance,
    structural_validity,
    unique_mask,
)
from matmeta.errors import MatmetaInputError


def _abx3(a: str, b: str, x=("O", "O", "O"), lattice: float = 4.0):
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(lattice), [a, b, *x], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


# ----------------------------------------------------------------------------------- validity


def test_srtio3_is_valid(srtio3):
    ok, shortest, volume = structural_validity(srtio3)
    assert ok
    assert shortest == pytest.approx(3.905 / 2)  # Ti-O
    assert volume == pytest.approx(3.905**3 / 5)
    assert compositional_validity(srtio3.composition)


def test_overlapping_atoms_are_flagged(srtio3):
    bad = srtio3.copy()
    bad.translate_sites([1], [0.05, 0.0, 0.0], frac_coords=True)  # Ti off-centre by 0.195 A: still fine
    assert structural_validity(bad)[0]
    bad.translate_sites([1], [0.0, 0.0, 0.45], frac_coords=True)  # Ti at (.55,.5,.95): 0.276 A from O at (.5,.5,1)
    ok, shortest, _ = structural_validity(bad)
    assert not ok and shortest == pytest.approx(3.905 * 0.05 * 2**0.5)
    assert shortest == pytest.approx(min_distance(bad))


def test_distance_to_own_periodic_image_counts():
    from pymatgen.core import Lattice, Structure

    thin = Structure(Lattice.tetragonal(0.4, 30.0), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert min_distance(thin) == pytest.approx(0.4)
    assert not structural_validity(thin, volume_range=(0.0, 1e9))[0]


def test_volume_per_atom_range(srtio3):
    swollen = _abx3("Sr", "Ti", lattice=9.0)  # 146 A^3 per atom
    assert not structural_validity(swollen)[0]
    assert structural_validity(swollen, volume_range=(5.0, 200.0))[0]


def test_charge_imbalanced_formula_is_flagged():
    assert not compositional_validity("NaKO3")  # +1 +1 vs -6
    assert not compositional_validity(_abx3("Cs", "K", ("F", "F", "F")).composition)
    assert compositional_validity("BaTiO3") and compositional_validity("LaAlO3")


def test_uniqueness_and_novelty(srtio3):
    moved = srtio3.copy()
    moved.translate_sites(list(range(5)), [0.25, 0.1, 0.0])  # same crystal, other origin
    bto = _abx3("Ba", "Ti", lattice=4.01)
    assert unique_mask([srtio3, moved, bto, bto]) == [True, False, True, False]
    assert unique_mask([srtio3, moved], considered=[False, True]) == [False, True]
    ref = ReferenceSet([srtio3])
    assert ref.contains(moved) and not ref.contains(bto)
    rows = judge_candidates([moved, bto], ref)
    assert [r["novel"] for r in rows] == [False, True]
    assert all(r["valid"] for r in rows)


def test_coverage_recall_and_precision():
    ref = [_abx3("Sr", "Ti"), _abx3("Ba", "Zr", lattice=4.2), _abx3("K", "Nb")]
    scaler = FingerprintScaler(np.stack([composition_fingerprint(s.composition) for s in ref]))
    assert coverage(ref, ref, scaler) == (1.0, 1.0)
    # one of the three reference crystals, plus a far-away one: recall 1/3, precision 1/2
    far = _abx3("Li", "Au", ("N", "N", "N"), lattice=3.0)
    far.translate_sites([1], [0.2, 0.1, 0.0])
    recall, precision = coverage([ref[0], far], ref, scaler)
    assert recall == pytest.approx(1 / 3) and precision == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------------- requests


def test_gap_window_and_impossible_requests():
    from matmeta.design.request import check_request, parse_gap_window

    assert parse_gap_window("2.0", 0.3) == pytest.approx((1.7, 2.3))
    assert parse_gap_window("1.5:2.5") == (1.5, 2.5)
    assert parse_gap_window("0.1", 0.5) == (0.0, 0.6)
    with pytest.raises(MatmetaInputError, match="--band-gap 'abc'"):
        parse_gap_window("abc")
    with pytest.raises(MatmetaInputError, match="low <= high"):
        parse_gap_window("3:1")
    with pytest.raises(MatmetaInputError, match="nothing to generate"):
        check_request(0, (1.7, 2.3), (0.0, 7.0))
    with pytest.raises(MatmetaInputError, match="outside what the decoder was trained on"):
        check_request(10, (49.7, 50.3), (0.0, 7.0))


# ----------------------------------------------------------------------------------- training + generation


class FixedPredictor:
    """Test-only scorer: a fixed function of the composition (never used by the product)."""

    nonmetal_cut = 0.5

    def predict_structures(self, structures):
        out = []
        for s in structures:
            gap = 2.0 if "O" in s.composition.reduced_formula else 0.0
            out.append(
                {
                    "heat_ref": -1.0,
                    "heat_ref_std": 0.1,
                    "band_gap": gap,
                    "band_gap_std": 0.2,
                    "p_metal": 0.1 if gap else 0.9,
                    "warning": None,
                }
            )
        return out


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, request):
    from conftest import require_shared

    from matmeta.store.ingest import ingest

    source = require_shared("perovskites/perovskites.csv")
    folder = tmp_path_factory.mktemp("store")
    csv.field_size_limit(10**8)
    with source.open() as handle:
        rows = list(csv.DictReader(handle))[:400]
    subset = folder / "perov400.csv"
    with subset.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = folder / "perov.lmdb"
    ingest(
        subset, out, targets=("heat_ref", "ind_gap", "dir_gap"), id_column="material_id", workers=1, show_progress=False
    )
    return out


@pytest.fixture(scope="module")
def tiny_generator(tiny_store, tmp_path_factory):
    from matmeta.design.train import meta_train_from_recipe

    folder = tmp_path_factory.mktemp("gen")
    recipe = {
        "meta_train": {
            "app": "generator",
            "store": str(tiny_store),
            "k_support": 3,
            "k_query": 4,
            "k_nonmetal": 1,
            "checkpoint": str(folder / "tiny.ckpt"),
        },
        "model": {"latent_dim": 4, "hidden": 32},
        "trainer": {"outer_steps": 20, "meta_batch_size": 4, "val_every": 15, "val_batches": 1, "seed": 0},
    }
    path = meta_train_from_recipe(recipe, folder / "recipes" / "generator.toml", steps=None)
    return path


def test_meta_train_writes_a_self_describing_checkpoint(tiny_generator):
    from matmeta.checkpoint import read_metadata

    meta = read_metadata(tiny_generator)
    assert meta["kind"] == "generator" and meta["model_class"] == "CrystalCVAE"
    assert meta["training"]["step"] == 20
    assert set(meta["families"]) == {"train", "val", "test"}
    assert not set(meta["families"]["train"]) & set(meta["families"]["test"])
    assert meta["site_elements"][2] and set(meta["site_elements"][2]) <= {"O", "N", "F", "S"}
    assert meta["gap_range_ev"][1] > 0


def test_generate_ranks_judges_and_writes_parseable_cifs(tiny_generator, tiny_store, tmp_path):
    from pymatgen.core import Structure

    from matmeta.design.generator import Generator
    from matmeta.design.pipeline import generate, training_reference, write_candidates

    gen = Generator.load(tiny_generator)
    reference = training_reference(gen, tiny_store)
    result = generate(12, (1.5, 2.5), gen, FixedPredictor(), seed=3, reference=reference)
    counts = [c for _, c in result.counts]
    assert counts[0] == 12 and all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    assert sorted(r["rank"] for r in result.rows) == list(range(1, 13))
    best = min(result.rows, key=lambda r: r["rank"])
    if counts[-1]:
        assert best["in_window"] and best["unique"]
    path = write_candidates(result, tmp_path / "cands")
    with path.open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["rank"]) for r in table] == list(range(1, 13))
    for row in table:
        if row["cif"]:
            s = Structure.from_file(tmp_path / "cands" / row["cif"])
            assert s.composition.reduced_formula == row["formula"]
    assert not list((tmp_path / "cands").glob("*.tmp"))
    again = generate(12, (1.5, 2.5), gen, FixedPredictor(), seed=3, reference=reference)
    assert [s.composition.formula for s in again.structures] == [s.composition.formula for s in result.structures]


def test_family_adaptation_moves_the_decoder(tiny_generator, srtio3):
    import torch

    from matmeta.design.generator import Generator

    gen = Generator.load(tiny_generator)
    examples = [srtio3.copy() for _ in range(3)]
    species, angles, lattice = gen.encode_structures(examples)
    before = gen.sample(64, None, seed=1)
    gen.adapt(examples, seed=0, steps=10)
    assert gen.fast is not None
    after = gen.sample(64, None, seed=1)
    sr_ti = lambda ss: sum(s[0].specie.symbol == "Sr" or s[1].specie.symbol == "Ti" for s in ss)  # noqa: E731
    assert sr_ti(after) > sr_ti(before)
    gen.reset()
    assert [s.composition for s in gen.sample(64, None, seed=1)] == [s.composition for s in before]
    assert torch.isfinite(angles).all()


def test_element_constraints(tiny_generator):
    from matmeta.design.generator import Generator

    gen = Generator.load(tiny_generator)
    with pytest.raises(MatmetaInputError, match="'Xx' is not an element"):
        gen.element_mask(["Xx"])
    with pytest.raises(MatmetaInputError, match="no allowed element left for the anion"):
        gen.element_mask(exclude=["O", "N", "F", "S"])
    allowed = ["Sr", "Ba", "Ti", "Zr", "O"]
    allowed = [e for e in allowed if e in gen.elements]
    mask = gen.element_mask(allowed)
    for s in gen.sample(20, None, seed=0, element_mask=mask):
        assert {e.symbol for e in s.composition} <= set(allowed)


def test_species_temperature_spreads_the_chemistry(tiny_generator):
    import torch

    from matmeta.design.generator import Generator
    from matmeta.design.pipeline import generate

    gen = Generator.load(tiny_generator)
    gaps = torch.full((200,), 2.0)
    mask = gen.element_mask()
    formulas = {
        t: [s.composition.reduced_formula for s in gen.sample(200, gaps, seed=2, element_mask=mask, temperature=t)]
        for t in (0.05, 1.0, 20.0)
    }
    # near-greedy sampling repeats formulas; a hot softmax repeats none more often than plain sampling
    modal = {t: max(f.count(x) for x in set(f)) for t, f in formulas.items()}
    assert len(set(formulas[0.05])) < len(set(formulas[1.0])) <= len(set(formulas[20.0]))
    assert modal[0.05] > modal[1.0] >= modal[20.0]
    same = [s.composition for s in gen.sample(30, gaps[:30], seed=2)]
    assert same == [s.composition for s in gen.sample(30, gaps[:30], seed=2, temperature=1.0)]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(MatmetaInputError, match="--temperature"):
            generate(4, (1.5, 2.5), gen, FixedPredictor(), temperature=bad)


def test_sampling_without_repeats_or_known_compositions(tiny_generator, tiny_store):
    import torch

    from matmeta.design.generator import Generator
    from matmeta.design.pipeline import generate, training_reference

    gen = Generator.load(tiny_generator)
    gaps = torch.full((40,), 2.0)
    mask = gen.element_mask()
    raw = [s.composition.reduced_formula for s in gen.sample(40, gaps, seed=5, element_mask=mask)]
    assert len(set(raw)) < len(raw)  # the plain decoder repeats itself: the test has something to remove
    common = {f for f in raw if raw.count(f) > 1}
    made, draws = gen.sample_distinct(40, gaps, seed=5, exclude=common, element_mask=mask)
    formulas = [s.composition.reduced_formula for s in made]
    assert len(set(formulas)) == 40 and not set(formulas) & common and draws > 40
    again, _ = gen.sample_distinct(40, gaps, seed=5, exclude=common, element_mask=mask)
    assert [s.composition.reduced_formula for s in again] == formulas
    # round 0 is the plain decoder: with nothing to avoid, the first draws are kept as they are
    kept, draws = gen.sample_distinct(40, gaps, seed=5, exclude=(), distinct=False, element_mask=mask)
    assert [s.composition.reduced_formula for s in kept] == raw and draws == 40

    reference = training_reference(gen, tiny_store)
    result = generate(16, (1.5, 2.5), gen, FixedPredictor(), seed=3, reference=reference)
    proposed = [s.composition.reduced_formula for s in result.structures]
    assert len(set(proposed)) == 16 and not set(proposed) & set(reference.by_formula)
    assert result.draws >= 16 and result.excluded == len(reference.by_formula)
    plain = generate(
        16, (1.5, 2.5), gen, FixedPredictor(), seed=3, reference=reference, novel_only=False, distinct=False
    )
    assert plain.draws == 16 and plain.excluded == 0


def test_substitution_baseline_and_its_whole_space():
    import numpy as np

    from matmeta.bench.generate import substitution_candidates, substitution_space

    prototypes = [_abx3("Sr", "Ti"), _abx3("La", "Ti", x=("O", "O", "N"))]
    cations = (["Sr", "Ba", "La", "Ti"], ["Ti", "Zr", "Sr"])
    space = substitution_space(prototypes, cations, np.random.default_rng(0), exclude={"SrTiO3"})
    formulas = [s.composition.reduced_formula for s in space]
    # 2 anion sets x (4 x 3 cation pairs - Sr/Sr - Ti/Ti) = 20, less SrTiO3 (excluded), TiSrO3 (= SrTiO3)
    # and TiSrO2N (= SrTiO2N): 17 (SMACT accepts all of these, with its full list of oxidation states)
    assert len(formulas) == 17 and len(set(formulas)) == 17
    assert {"BaZrO3", "LaTiNO2", "BaTiO3", "ZrTiO3"} <= set(formulas)
    assert "SrTiO3" not in formulas and not any(s[0].specie == s[1].specie for s in space)
    assert all(compositional_validity(s.composition) for s in space)

    rng = np.random.default_rng(1)
    drawn, draws = substitution_candidates(prototypes, cations, 6, rng, exclude={"SrTiO3"}, distinct=True)
    got = [s.composition.reduced_formula for s in drawn]
    assert len(set(got)) == 6 and set(got) <= set(formulas) and draws >= 6


def test_repository_recipe_is_loadable():
    from matmeta.design.train import GeneratorTrainConfig
    from matmeta.recipes import config_from_dict, load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "generator.toml")
    assert recipe["meta_train"]["app"] == "generator"
    cfg = config_from_dict(GeneratorTrainConfig, {k: v for k, v in recipe["meta_train"].items() if k != "app"})
    assert cfg.family_by == "b_site"


def test_renamed_library_arguments_still_work_for_a_release():
    from matmeta.bench.generate import RENAMED
    from matmeta.design.deliver import run_design
    from matmeta.design.request import DesignRequest
    from matmeta.errors import RecipeError
    from matmeta.recipes import renamed_keys

    with pytest.warns(DeprecationWarning, match="tolerance= is deprecated: use gap_half_width="):
        old = DesignRequest(band_gap="2.0", tolerance=0.7)
    assert old == DesignRequest(band_gap="2.0", gap_half_width=0.7) and old.tolerance is None
    with pytest.raises(TypeError, match="checkpoint= and generator="):
        run_design(DesignRequest(), generator="a.ckpt", checkpoint="a.ckpt")  # refused before any work
    assert renamed_keys({"tolerance": 0.4, "n": 3}, RENAMED, "r.toml[bench]") == {"gap_half_width": 0.4, "n": 3}
    with pytest.raises(RecipeError, match="r.toml\\[bench\\]: predictor and model are the same setting"):
        renamed_keys({"predictor": "", "model": ""}, RENAMED, "r.toml[bench]")


def test_too_small_families_are_refused_naming_the_store_before_its_structures_are_read(tiny_store, monkeypatch):
    from matmeta.design.data import DecoderEpisodes, load_design_data
    from matmeta.errors import StoreError
    from matmeta.store.reader import GraphStore

    arrays, _, _ = load_design_data(tiny_store, "ind_gap", "b_site")
    sizes = sorted(Counter(arrays.families).items(), key=lambda kv: (-kv[1], kv[0]))
    too_many = sizes[0][1] + 1
    with pytest.raises(StoreError, match=f"none of the 2 families has k_support \\+ k_query = {too_many} members"):
        DecoderEpisodes(arrays, [f for f, _ in sizes[:2]], too_many - 1, 1, 0, 0.0, 4, 2.0, source=str(tiny_store))
    with pytest.raises(StoreError, match=f"^{tiny_store}: none of"):
        DecoderEpisodes(arrays, [f for f, _ in sizes[:2]], too_many - 1, 1, 0, 0.0, 4, 2.0, source=str(tiny_store))
    read: list[int] = []
    monkeypatch.setattr(GraphStore, "structure", lambda self, i: read.append(i))
    with pytest.raises(StoreError, match=f"^{tiny_store}: no family has 100000 structures with a finite ind_gap"):
        load_design_data(tiny_store, "ind_gap", "b_site", min_family_size=100_000)
    assert read == []  # refused on the labels alone, before any structure is read
