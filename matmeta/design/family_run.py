"""``matmeta generate --prototype NAME`` / ``--family-examples DIR``: the family design run end to end.

Loads what the run needs (family table of the Materials Project store, the decoder, the predictor, the
known hull, the CHGNet reference), adapts the decoder to the family's examples, fills the request
(:func:`matmeta.design.family_design.fill`), relaxes and re-judges every hit, and writes the result.

One job: wiring and output of a family design run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matmeta.design.family_design import FamilyRequest, FamilyResult, decoder_proposer, fill, relax_and_rejudge
from matmeta.design.family_table import Family, build_families
from matmeta.errors import MatmetaInputError

SUPPORT_FROM_STORE = 10
COLUMNS = (
    "rank", "formula", "prototype", "band_gap_ev", "formation_energy_ev_per_atom", "e_above_hull_pred",
    "band_gap_ev_relaxed", "e_above_hull_chgnet", "e_above_hull_pred_relaxed", "prototype_relaxed",
    "prototype_kept", "in_window_relaxed", "kept", "sun", "rmsd_ang", "min_distance_ang", "charge_neutral", "cif",
)  # fmt: skip


@dataclass
class FamilyContext:
    """The family to design in, the members the decoder adapts on, and how to get a member's cell."""

    family: Family
    support: list[Any]
    cell_of: Any
    source: str


def examples_family(examples: Sequence[Any]) -> FamilyContext:
    """A family made of the user's example structures (they must share one prototype)."""
    from matmeta.prototypes import prototype, structure_arrays

    if not examples:
        raise MatmetaInputError("--family-examples: no readable example structure")
    names = {prototype(s) for s in examples}
    if len(names) > 1:
        listed = ", ".join(sorted(names))
        raise MatmetaInputError(f"--family-examples: the examples have {len(names)} prototypes ({listed}): one")
    name = names.pop()
    records = []
    for i, s in enumerate(examples):
        lattice, frac, numbers = structure_arrays(s)
        records.append((f"example-{i}", name, frac, lattice, numbers, math.nan, math.nan))
    family = build_families(records, min_members=1).get(name)
    if family is None:
        raise MatmetaInputError(f"--family-examples: spglib found no consistent slots in the examples of {name}")
    cells = {f"example-{i}": s for i, s in enumerate(examples)}
    return FamilyContext(family, list(family.members), lambda m: cells[m.material_id], f"{len(examples)} examples")


def store_family(table: Any, store: Any, name: str, seed: int) -> FamilyContext:
    """A family of the store; the decoder adapts on ``SUPPORT_FROM_STORE`` of its members (seeded)."""
    from matmeta.design.family_cells import store_cells

    family = table.family(name)
    order = np.random.default_rng(seed).permutation(len(family.members))[:SUPPORT_FROM_STORE]
    return FamilyContext(family, [family.members[i] for i in order], store_cells(store), f"{len(order)} store members")


def design(
    context: FamilyContext,
    request: FamilyRequest,
    decoder: Any,
    predictor: Any,
    hull: Any,
    reference: Any,
    seed: int = 0,
    temperature: float = 1.0,
    progress: Any = None,
) -> FamilyResult:
    """Adapt, fill to ``request.n`` hits, relax and re-judge them; rows ranked by CHGNet hull distance."""
    fast = decoder.adapt(context.family, context.support)
    target = 0.5 * (request.window[0] + request.window[1])
    proposer = decoder_proposer(decoder, context.family, fast, request, target, seed, temperature)
    task = progress.add_task(f"{context.family.name}: filling", total=request.n) if progress is not None else None
    on_hit = (lambda: progress.advance(task)) if progress is not None else None
    result = fill(context.family, proposer, context.cell_of, predictor, hull, request, on_hit=on_hit)
    if request.relax:
        relax_and_rejudge(result, predictor, hull, reference, request)
    return rank(result)


def rank(result: FamilyResult) -> FamilyResult:
    """Kept candidates first, then by energy above the hull (CHGNet after relaxing, else the predictor's)."""

    def key(i: int) -> tuple[bool, float]:
        row = result.rows[i]
        e = row.get("e_above_hull_chgnet", row["e_above_hull_pred"])
        return (not row.get("kept", True), e if math.isfinite(e) else math.inf)

    order = sorted(range(len(result.rows)), key=key)
    result.rows = [result.rows[i] for i in order]
    result.structures = [result.structures[i] for i in order]
    if result.relaxed:
        result.relaxed = [result.relaxed[i] for i in order]
    for r, row in enumerate(result.rows, start=1):
        row["rank"] = r
        row["prototype"] = result.family
    return result


def write_family_result(result: FamilyResult, out: Path) -> Path:
    """CIFs (generated, and relaxed where relaxed) and ``candidates.csv``, each written atomically."""
    from matmeta.atomic import writable_dir, write_table, write_text_atomic

    folder = writable_dir(out)
    relaxed = result.relaxed or [None] * len(result.rows)
    for row, cell, after in zip(result.rows, result.structures, relaxed, strict=True):
        stem = f"{row['rank']:03d}_{row['formula']}"
        write_text_atomic(folder / f"{stem}_generated.cif", cell.to(fmt="cif"))
        row["cif"] = ""
        if after is not None:
            row["cif"] = f"{stem}_relaxed.cif"
            write_text_atomic(folder / row["cif"], after.to(fmt="cif"))
    return write_table(
        folder / "candidates.csv", [{k: row.get(k, "") for k in COLUMNS} for row in result.rows], COLUMNS
    )


def load_judges(model: Path | None, decoder_path: Path | None) -> tuple[Any, Any, Any, Any]:
    """Decoder, predictor, known hull and CHGNet reference (the slow part: the hull reads mp36k's CSV, ~3 s)."""
    from matmeta.design.chgnet_reference import ChgnetReference
    from matmeta.design.family_decoder import FamilyDecoder
    from matmeta.design.hull import KnownHull
    from matmeta.predict.predictor import Predictor

    return FamilyDecoder.load(decoder_path), Predictor.load(model), KnownHull.from_csv(), ChgnetReference.load()


def load_store_families(decoder: Any, predictor: Any) -> tuple[Any, Any]:
    """The family table and graph store of the decoder's training data (built on first use: minutes)."""
    from matmeta.design.family_train import family_table_for, predictor_split
    from matmeta.store.datasets import ensure_store
    from matmeta.store.reader import GraphStore

    root = Path(__file__).resolve().parent.parent.parent
    store_rel, _, _ = predictor_split(root / decoder.train_config.predictor_recipe)
    store_path = ensure_store(root / store_rel, "mp/mp36k.csv", targets=("formation_energy_per_atom", "band_gap"))
    return family_table_for(decoder.train_config, root, predictor), GraphStore(store_path)


def load_everything(model: Path | None, decoder_path: Path | None) -> tuple[Any, Any, Any, Any, Any, Any]:
    """Family table, store, decoder, predictor, known hull and CHGNet reference."""
    decoder, predictor, hull, reference = load_judges(model, decoder_path)
    table, store = load_store_families(decoder, predictor)
    return table, store, decoder, predictor, hull, reference
