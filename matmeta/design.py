"""Inverse design: a meta-learned conditional decoder proposes ABX3 cells for a target band gap.

Pipeline of :func:`generate`::

    decoder (optionally adapted to a family from a few example CIFs with the MAML inner loop)
      → sample n cells conditioned on (non-metal, gap); optional classifier-free guidance on the species
                                                                    [steering 1: conditioning]
      → redraw a draw whose composition is a training one or repeats an earlier candidate
        (rejection sampling; a set lookup, no predictor call)       [steering 3: novelty]
      → structural / compositional validity, uniqueness, novelty     [matmeta.validity]
      → band gap, metal probability, formation energy by the predictor
      → rank: valid ∧ unique ∧ in the gap window first             [steering 2: predictor rejection]

No gradient steps in latent space are taken (the predictor is a graph network on the decoded
structure, not differentiable through the sampling of species).

One job: the inverse-design app — load the decoder (:class:`Generator`), read a request, sample,
judge, score and rank candidates, write them (``matmeta generate``, :func:`run_generate`).

The decoder is :class:`matmeta.models.decoder.CrystalCVAE` on a canonical five-site cell
(see :func:`matmeta.design_data.canonical_cell`; the cells, tensors and episodes live in
:mod:`matmeta.design_data`). It is meta-trained by the engine (:class:`matmeta.meta.trainer.MetaTrainer`,
driven by :mod:`matmeta.design_train`)
with families (B-site cation by default) as tasks: the inner loop adapts to a family from its
*unlabelled* example structures (null condition), the outer loss is the conditional ELBO on other
structures of the same family. That is exactly the ``--family-examples`` use at inference.
Half of the training episodes are zero-shot (support weight 0), so the meta-initialisation is also a
good generator by itself. The judges of a candidate live in :mod:`matmeta.validity`; they, and the
public names of :mod:`matmeta.design_data` and :mod:`matmeta.design_train`, are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.design_data import (  # re-exported: the decoder's data side
    ELEMENT_DESCRIPTORS,
    N_SITES,
    CellArrays,
    DecoderEpisodes,
    arrays_from_structures,
    canonical_cell,
    cell_to_structure,
    collate,
    condition,
    element_features,
    encode_cells,
    load_design_data,
    loss_fn,
    make_batch,
    per_example_loss,
    site_elements,
)
from matmeta.design_train import (  # re-exported: meta-training the decoder
    CHECKPOINT_DIR,
    DEFAULT_CHECKPOINT,
    GeneratorTrainConfig,
    family_split,
    meta_train_from_recipe,
)
from matmeta.errors import MatmetaInputError
from matmeta.models.decoder import COND_DIM, CrystalCVAE, DecoderConfig
from matmeta.validity import (  # re-exported: the reusable judges of a candidate
    ReferenceSet,
    compositional_validity,
    coverage,
    judge_candidates,
    structural_validity,
    unique_mask,
)

# ---------------------------------------------------------------------------------------- generator


class Generator:
    """A trained decoder with its metadata; samples (optionally family-adapted) ABX3 cells.

    Args:
        maml: the engine wrapping the decoder (its inner loop adapts to family examples).
        metadata: checkpoint metadata.
        path: where it was loaded from.
    """

    def __init__(self, maml: Any, metadata: dict[str, Any], path: Path | None = None) -> None:
        self.maml = maml
        self.model: CrystalCVAE = maml.model
        self.metadata = metadata
        self.path = path
        self.elements: tuple[str, ...] = tuple(self.model.config.elements)
        self.fast: dict[str, Tensor] | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> Generator:
        """Load a generator checkpoint (None: the shipped default)."""
        from matmeta.checkpoint import expect, load_checkpoint, load_state_strict
        from matmeta.meta.maml import MAML
        from matmeta.recipes import config_from_dict

        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        tensors, meta = load_checkpoint(path)
        expect(meta, path, kind="generator")
        mcfg = config_from_dict(DecoderConfig, meta["model_config"], f"{path}:model_config")
        tcfg = meta.get("training", {}).get("maml", {})
        train_cfg = meta.get("train_config", {})
        model = CrystalCVAE(mcfg)
        maml = MAML(
            model,
            float(tcfg.get("inner_lr", train_cfg.get("inner_lr", 0.05))),
            int(tcfg.get("inner_steps", train_cfg.get("inner_steps", 1))),
            learn_inner_lr=bool(tcfg.get("learn_inner_lr", True)),
            adapt=tuple(tcfg["adapt_names"]) if "adapt_names" in tcfg else train_cfg.get("adapt", "all"),
        )
        load_state_strict(maml, tensors, path)
        maml.eval()
        return cls(maml, meta, path)

    @property
    def gap_range(self) -> tuple[float, float]:
        """Band gaps (eV) the decoder was trained on."""
        lo, hi = self.metadata.get("gap_range_ev", [0.0, 10.0])
        return float(lo), float(hi)

    def encode_structures(
        self, structures: Sequence[Any], names: Sequence[str] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Canonical tensors of example structures (errors name the input)."""
        names = names or [f"structure {i}" for i in range(len(structures))]
        cells = [canonical_cell(s, self.elements, n) for s, n in zip(structures, names, strict=True)]
        return encode_cells(cells)

    def adapt(
        self, structures: Sequence[Any], seed: int = 0, steps: int | None = None, names: Sequence[str] | None = None
    ) -> None:
        """Adapt the decoder to a family from a few unlabelled example structures (the inner loop).

        Args:
            structures: 1–20 examples of the family (5-atom ABX3 cells).
            seed: seeds the reparameterisation noise of the inner loop.
            steps: inner steps (default: the meta-trained number).
            names: names of the examples for error messages.
        """
        species, angles, lattice = self.encode_structures(structures, names)
        gen = torch.Generator().manual_seed(seed)
        null = torch.zeros(len(species), COND_DIM)
        batch = make_batch(species, angles, lattice, null, gen, self.model.config.latent_dim)
        self.maml.eval()
        self.fast = self.maml.adapt(batch, loss_fn, steps=steps)

    def reset(self) -> None:
        """Forget any family adaptation."""
        self.fast = None

    def element_mask(self, elements: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> Tensor:
        """(S, V) bool: which element may sit on which canonical site.

        Site roles come from the training data (cation sites / anion sites); ``elements``
        restricts, ``exclude`` removes. Unknown symbols raise ``MatmetaInputError``.
        """
        from pymatgen.core import Element

        for flag, group in (("--elements", elements), ("--exclude-elements", exclude)):
            for sym in group or ():
                try:
                    Element(sym)
                except ValueError:
                    raise MatmetaInputError(f"{flag}: {sym!r} is not an element symbol") from None
                if sym not in self.elements:
                    raise MatmetaInputError(
                        f"{flag}: {sym} was never seen by the decoder (it knows {len(self.elements)} elements)"
                    )
        allowed = set(elements) if elements else set(self.elements)
        allowed -= set(exclude or ())
        roles = self.metadata.get("site_elements") or [list(self.elements)] * N_SITES
        mask = torch.zeros(N_SITES, len(self.elements), dtype=torch.bool)
        for s, role in enumerate(roles):
            for sym in role:
                if sym in allowed:
                    mask[s, self.elements.index(sym)] = True
        empty = [s for s in range(N_SITES) if not mask[s].any()]
        if empty:
            kind = "cation (A/B)" if empty[0] < 2 else "anion (X)"
            raise MatmetaInputError(f"--elements/--exclude-elements: no allowed element left for the {kind} sites")
        return mask

    def sample(
        self,
        n: int,
        gap_ev: Tensor | None,
        seed: int = 0,
        element_mask: Tensor | None = None,
        temperature: float = 1.0,
        geometry_noise: float = 0.0,
        guidance: float = 0.0,
    ) -> list[Any]:
        """``n`` structures; conditioned on ``gap_ev`` (n,) as a non-metal, or unconditioned when None."""
        gen = torch.Generator().manual_seed(seed)
        scale = self.model.config.gap_scale_ev
        cond = torch.zeros(n, COND_DIM) if gap_ev is None else condition(gap_ev, scale=scale)
        model = self.model if self.fast is None else _adapted_copy(self.model, self.fast)
        out = model.sample(
            cond,
            gen,
            element_mask,
            temperature,
            geometry_noise,
            guidance=guidance if gap_ev is not None else 0.0,
            guide=self.model,
        )
        return [
            cell_to_structure(
                out["species"][i].tolist(), out["frac"][i].numpy(), out["lattice"][i].numpy(), self.elements
            )
            for i in range(n)
        ]

    def sample_distinct(
        self,
        n: int,
        gap_ev: Tensor | None,
        seed: int = 0,
        exclude: Collection[str] = (),
        distinct: bool = True,
        max_draws_per_candidate: int = 50,
        **sample_options: Any,
    ) -> tuple[list[Any], int]:
        """``n`` structures whose compositions are not in ``exclude`` and (``distinct``) differ from each other.

        Rejection sampling: every slot keeps its own condition (``gap_ev[i]``) and draws from the
        decoder until a draw's reduced formula is neither excluded nor already taken, so each
        candidate is an exact draw from the decoder's distribution restricted to the allowed
        compositions (no re-weighting of the chemistry). The predictor is not consulted. A slot still
        empty after ``max_draws_per_candidate`` × n draws in all keeps its first draw (the judges then
        flag it as known or repeated).

        Args:
            n: candidates.
            gap_ev: (n,) conditions, or None for the unconditioned decoder.
            seed: the one seed.
            exclude: reduced formulas that may not be proposed (e.g. the training compositions).
            distinct: no two candidates with the same reduced formula.
            max_draws_per_candidate: the draw budget per candidate.
            sample_options: passed to :meth:`sample` (``element_mask``, ``temperature``, ``guidance``...).

        Returns:
            ``(structures, draws)``: the candidates in slot order and how many decoder draws it took.
        """
        excluded = set(exclude)
        taken: set[str] = set()
        filled: dict[int, Any] = {}
        first: dict[int, Any] = {}
        draws, copies, rnd = 0, 1, 0
        while len(filled) < n and draws < max_draws_per_candidate * n:
            pending = [i for i in range(n) if i not in filled]
            index = torch.tensor(pending).repeat_interleave(copies)
            gaps = None if gap_ev is None else gap_ev[index]
            drawn = self.sample(len(index), gaps, seed=_round_seed(seed, rnd), **sample_options)
            draws += len(drawn)
            for j, slot in enumerate(pending):
                for s in drawn[j * copies : (j + 1) * copies]:
                    first.setdefault(slot, s)
                    formula = s.composition.reduced_formula
                    if formula in excluded or (distinct and formula in taken):
                        continue
                    filled[slot] = s
                    taken.add(formula)
                    break
            copies, rnd = min(2 * copies, 16), rnd + 1
        return [filled.get(i, first[i]) for i in range(n)], draws


def _round_seed(seed: int, rnd: int) -> int:
    """The seed of rejection round ``rnd`` (round 0 draws exactly what :meth:`Generator.sample` would)."""
    return seed if rnd == 0 else (seed * 1_000_003 + 7_919 * rnd) % (2**63)


def _adapted_copy(model: CrystalCVAE, fast: dict[str, Tensor]) -> CrystalCVAE:
    """A copy of ``model`` holding the fast (family-adapted) weights."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in clone.named_parameters():
            if name in fast:
                param.copy_(fast[name])
    return clone.eval()


# ---------------------------------------------------------------------------------------- requests


def parse_gap_window(band_gap: str | float, tolerance: float = 0.3) -> tuple[float, float]:
    """``"2.0"`` with a tolerance, or ``"1.5:2.5"``, as a window (lo, hi) in eV."""
    text = str(band_gap).strip()
    try:
        if ":" in text:
            lo_s, hi_s = text.split(":", 1)
            lo, hi = float(lo_s), float(hi_s)
        else:
            centre = float(text)
            if tolerance < 0:
                raise MatmetaInputError(f"--tolerance {tolerance}: must be >= 0")
            lo, hi = centre - tolerance, centre + tolerance
    except ValueError:
        raise MatmetaInputError(f"--band-gap {text!r}: expected a number (2.0) or a window (1.5:2.5) in eV") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise MatmetaInputError(f"--band-gap {text!r}: the window must be finite with low <= high")
    if hi < 0:
        raise MatmetaInputError(f"--band-gap {text!r}: a band gap cannot be negative")
    return max(lo, 0.0), hi


def check_request(n: int, window: tuple[float, float], gap_range: tuple[float, float]) -> None:
    """Refuse requests that cannot be met, with one line: nothing to generate, a gap out of reach."""
    if n < 1:
        raise MatmetaInputError(f"-n {n}: nothing to generate; ask for at least one candidate")
    lo, hi = window
    if lo > gap_range[1] or hi < gap_range[0]:
        raise MatmetaInputError(
            f"--band-gap {lo:g}:{hi:g} eV: outside what the decoder was trained on "
            f"({gap_range[0]:g}–{gap_range[1]:.2f} eV); no candidate can be steered there"
        )


def check_temperature(temperature: float) -> None:
    """Refuse a species temperature that is not a finite positive number, with one line."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise MatmetaInputError(f"--temperature {temperature:g}: must be a finite number > 0 (1 = no change)")


def target_gaps(n: int, window: tuple[float, float], gap_range: tuple[float, float], seed: int) -> Tensor:
    """Condition values: uniform over the window clipped to the trained range (the centre for a point).

    Shapes:
        -> (n,).
    """
    lo, hi = max(window[0], gap_range[0]), min(window[1], gap_range[1])
    gen = torch.Generator().manual_seed(seed + 7919)
    return lo + (hi - lo) * torch.rand(n, generator=gen)


@dataclass
class GenerationResult:
    """Candidates of one ``generate`` call.

    Attributes:
        structures: the decoded structures, in generation order.
        rows: one dict per candidate (the ``candidates.csv`` columns).
        counts: (filter name, count) in pipeline order.
        window: the band-gap window (eV).
        draws: decoder draws it took (more than the candidates when known compositions or repeats
            were redrawn).
        excluded: how many known compositions candidates were kept away from (0: none).
    """

    structures: list[Any]
    rows: list[dict[str, Any]]
    counts: list[tuple[str, int]]
    window: tuple[float, float]
    draws: int = 0
    excluded: int = 0


def generate(
    n: int,
    window: tuple[float, float],
    generator: Generator,
    predictor: Any,
    seed: int = 0,
    elements: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    family_examples: Sequence[Any] | None = None,
    reference: Any | None = None,
    conditional: bool = True,
    temperature: float = 1.0,
    guidance: float = 0.0,
    novel_only: bool = True,
    distinct: bool = True,
) -> GenerationResult:
    """Sample, judge, score and rank ``n`` candidates for a band-gap window.

    Args:
        n: candidates to sample.
        window: band-gap window (eV).
        generator: the decoder (``Generator.load()``).
        predictor: anything with ``predict_structures(structures) -> list[dict]`` (``matmeta.predict.Predictor``).
        seed: the one seed (same seed, same candidates).
        elements: allowed elements (None: all the decoder knows).
        exclude: forbidden elements.
        family_examples: example structures of a family to adapt to first (inner loop).
        reference: a :class:`matmeta.validity.ReferenceSet` for novelty (None: novelty not judged).
        conditional: condition on the window (False: the unconditioned decoder).
        temperature: species softmax temperature (1: the decoder's own distribution; higher trades
            success for uniqueness and novelty, measured in recipes/generate.toml).
        guidance: classifier-free guidance weight on the species (0: plain conditioning).
        novel_only: redraw any draw whose composition is in ``reference`` (the training compositions),
            so every candidate is new chemistry (needs ``reference``; steering 3 below).
        distinct: redraw any draw whose composition an earlier candidate already has.

    Steering 3, a free composition lookup (no predictor call): with ``novel_only``/``distinct`` the
    decoder is sampled without replacement outside the known compositions (rejection sampling, see
    :meth:`Generator.sample_distinct`); ``draws`` in the result says how many draws that took.
    """
    check_request(n, window, generator.gap_range)
    check_temperature(temperature)
    mask = generator.element_mask(elements, exclude)
    if family_examples:
        generator.adapt(family_examples, seed=seed)
    gaps = target_gaps(n, window, generator.gap_range, seed) if conditional else None
    options = {"element_mask": mask, "temperature": temperature, "guidance": guidance}
    known = set(reference.by_formula) if (novel_only and reference is not None) else set()
    if known or distinct:
        structures, draws = generator.sample_distinct(n, gaps, seed=seed, exclude=known, distinct=distinct, **options)
        formulas = [s.composition.reduced_formula for s in structures]
        left = sum(f in known for f in formulas) + (len(formulas) - len(set(formulas)) if distinct else 0)
        if left:
            from matmeta.console import warn

            warn(
                f"{left} of {n} candidates repeat an earlier candidate or a training composition: the decoder "
                f"proposed nothing else in {draws} draws (ask for fewer, or widen --elements)"
            )
    else:
        structures, draws = generator.sample(n, gaps, seed=seed, **options), n
    judged = judge_candidates(structures, reference)
    preds = predictor.predict_structures(structures)
    rows = []
    for i, (s, j, p) in enumerate(zip(structures, judged, preds, strict=True)):
        gap = float(p["band_gap"])
        metal = float(p["p_metal"])
        in_window = bool(j["valid"] and metal < 0.5 and window[0] <= gap <= window[1])
        rows.append(
            {
                "id": f"cand-{i:05d}",
                "formula": s.composition.reduced_formula,
                "band_gap_ev": gap,
                "band_gap_std_ev": float(p.get("band_gap_std", float("nan"))),
                "p_metal": metal,
                "heat_ref_ev_per_cell": float(p["heat_ref"]),
                "heat_ref_std_ev": float(p.get("heat_ref_std", float("nan"))),
                **j,
                "in_window": in_window,
                "warning": p.get("warning") or "",
            }
        )
    centre = 0.5 * (window[0] + window[1])
    order = sorted(
        range(n),
        key=lambda i: (
            not (rows[i]["in_window"] and rows[i]["unique"]),
            not rows[i]["valid"],
            not rows[i]["unique"],
            rows[i].get("novel") is False,
            abs(rows[i]["band_gap_ev"] - centre) + 10.0 * rows[i]["p_metal"],
            rows[i]["heat_ref_ev_per_cell"],
        ),
    )
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    counts = filter_counts(rows)
    if family_examples:
        generator.reset()
    return GenerationResult(structures, rows, counts, window, draws=draws, excluded=len(known))


def filter_counts(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many candidates survive each filter, applied in sequence."""
    stages = [
        ("generated", lambda r: True),
        ("structurally valid", lambda r: r["struct_valid"]),
        ("compositionally valid", lambda r: r["comp_valid"]),
        ("unique", lambda r: r["unique"]),
        ("novel", lambda r: r.get("novel") is not False),
        ("predicted non-metal", lambda r: r["p_metal"] < 0.5),
        ("gap in window", lambda r: r["in_window"]),
    ]
    if rows and all(r.get("novel") is None for r in rows):
        stages = [(name + " (not judged: no store)" if name == "novel" else name, keep) for name, keep in stages]
    alive = list(rows)
    counts = []
    for name, keep in stages:
        alive = [r for r in alive if keep(r)]
        counts.append((name, len(alive)))
    return counts


@dataclass(frozen=True)
class DesignRequest:
    """What ``matmeta generate`` is asked for (CLI flags; a notebook can build one directly).

    Attributes:
        band_gap: a value ("2.0") or a window ("1.5:2.5"), eV.
        tolerance: half-width around a single value, eV.
        n: candidates to sample.
        seed: the one seed.
        elements: allowed elements (None: all).
        exclude: forbidden elements.
        guidance: classifier-free guidance weight.
        temperature: species softmax temperature.
        novel_only: never propose a training composition (when the store is available).
        distinct: never propose a composition twice.
    """

    band_gap: str = "2.0"
    tolerance: float = 0.3
    n: int = 200
    seed: int = 0
    elements: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    guidance: float = 0.0
    temperature: float = 1.0
    novel_only: bool = True
    distinct: bool = True


def training_reference(generator: Generator, store: str | Path | None = None) -> Any:
    """The decoder's training structures (training families of its store) as a novelty reference.

    Returns None (novelty not judged, with a warning) when the store is not available.
    """
    from matmeta.console import warn
    from matmeta.validity import ReferenceSet

    meta = generator.metadata
    if store is None:
        stored = meta.get("train_config", {}).get("store")
        store = stored if stored and Path(stored).exists() else None
        if store is None and stored:
            root = CHECKPOINT_DIR.parent.parent
            store = root / stored if (root / stored).exists() else None
    if store is None or not Path(store).exists():
        warn("training store not found: novelty is not judged (pass --store out/perov.lmdb)")
        return None
    from matmeta.store import GraphStore

    graphs = GraphStore(store)
    train = set(meta.get("families", {}).get("train", []))
    families = graphs.family_keys(meta.get("family_by", "b_site"))
    return ReferenceSet([graphs.structure(i) for i, f in enumerate(families) if not train or f in train])


def run_generate(
    request: DesignRequest,
    family_examples: Sequence[tuple[str, Any]] | None = None,
    checkpoint: str | Path | None = None,
    predictor: str | Path | None = None,
    store: str | Path | None = None,
) -> GenerationResult:
    """``matmeta generate`` as a library call: load the decoder and predictor, generate, judge, rank.

    Args:
        request: the target and options.
        family_examples: ``(name, structure)`` examples to adapt to first.
        checkpoint: generator checkpoint (None: shipped).
        predictor: predictor checkpoint (None: shipped).
        store: training store for novelty (None: the checkpoint's when present).
    """
    from matmeta.predict import Predictor

    window = parse_gap_window(request.band_gap, request.tolerance)
    check_temperature(request.temperature)
    gen = Generator.load(checkpoint)
    check_request(request.n, window, gen.gap_range)
    gen.element_mask(request.elements, request.exclude)
    examples = None
    if family_examples:
        names = [name for name, _ in family_examples]
        examples = [s for _, s in family_examples]
        gen.encode_structures(examples, names)  # one-line errors naming a bad example, before any work
    scorer = Predictor.load(predictor)
    reference = training_reference(gen, store)
    return generate(
        request.n,
        window,
        gen,
        scorer,
        seed=request.seed,
        elements=request.elements,
        exclude=request.exclude,
        family_examples=examples,
        reference=reference,
        temperature=request.temperature,
        guidance=request.guidance,
        novel_only=request.novel_only,
        distinct=request.distinct,
    )


CSV_COLUMNS = (
    "rank",
    "id",
    "formula",
    "band_gap_ev",
    "band_gap_std_ev",
    "p_metal",
    "heat_ref_ev_per_cell",
    "heat_ref_std_ev",
    "in_window",
    "struct_valid",
    "comp_valid",
    "valid",
    "unique",
    "novel",
    "min_distance_ang",
    "volume_per_atom_ang3",
    "cif",
    "warning",
)


def write_candidates(result: GenerationResult, out_dir: str | Path) -> Path:
    """Write one CIF per structurally valid candidate and ``candidates.csv`` (rank order), atomically.

    Returns:
        The path of ``candidates.csv``.
    """
    import csv
    import io

    from pymatgen.io.cif import CifWriter

    from matmeta.atomic import write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(result.rows, key=lambda r: r["rank"])
    for row in rows:
        row["cif"] = ""
        if row["struct_valid"]:
            index = int(row["id"].split("-")[1])
            name = f"{row['rank']:04d}_{row['formula']}.cif"
            write_text_atomic(out_dir / name, str(CifWriter(result.structures[index])))
            row["cif"] = name
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path = out_dir / "candidates.csv"
    write_text_atomic(path, buffer.getvalue())
    return path


__all__ = [
    # matmeta.validity
    "ReferenceSet",
    "compositional_validity",
    "coverage",
    "judge_candidates",
    "structural_validity",
    "unique_mask",
    # matmeta.design_data
    "ELEMENT_DESCRIPTORS",
    "N_SITES",
    "CellArrays",
    "DecoderEpisodes",
    "arrays_from_structures",
    "canonical_cell",
    "cell_to_structure",
    "collate",
    "condition",
    "element_features",
    "encode_cells",
    "load_design_data",
    "loss_fn",
    "make_batch",
    "per_example_loss",
    "site_elements",
    # matmeta.design_train
    "CHECKPOINT_DIR",
    "DEFAULT_CHECKPOINT",
    "GeneratorTrainConfig",
    "family_split",
    "meta_train_from_recipe",
    # this module: the inverse-design app
    "CSV_COLUMNS",
    "DesignRequest",
    "GenerationResult",
    "Generator",
    "check_request",
    "check_temperature",
    "filter_counts",
    "generate",
    "parse_gap_window",
    "run_generate",
    "target_gaps",
    "training_reference",
    "write_candidates",
]
