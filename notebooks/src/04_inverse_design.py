# %% [markdown]
# # 04 · Inverse design: perovskites for a band-gap window
#
# Ask for crystals with a band gap between 1.5 and 2.5 eV (visible-light absorbers). `matmeta` answers with three
# models:
#
# - a **conditional decoder** (`CrystalCVAE-Perovskites`, a VAE over 5-atom ABX3 cells, meta-trained on the B-site
#   families of the Castelli perovskites) proposes cells conditioned on the target gap;
# - the **perovskite predictor** (`Predictor.load("perovskites")`, a crystal GNN) judges each proposal: band gap,
#   P(metal), heat of formation;
# - **CHGNet** (a universal interatomic potential) relaxes every returned candidate, which is then predicted again.
#
# A candidate is returned if it is valid, unique, predicted non-metal, predicted in the window and *stable*:
# predicted heat of formation ≤ 0.2 eV/atom and Goldschmidt tolerance factor 1.00 ≤ t ≤ 1.11 (the window where
# CHGNet keeps training compositions cubic). All of it is one library call, `run_design`, which is what
# `matmeta generate --band-gap 2.0 --gap-half-width 0.5 -n 6` runs.

# %%
%matplotlib inline
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
plt.rcParams.update({"figure.dpi": 90, "font.size": 9})

REPO = Path.cwd().parent  # notebooks run in notebooks/
SHARED = Path(os.environ.get("MATMETA_SHARED_DATA", REPO.parent / "shared" / "data"))

from matmeta.design.deliver import run_design
from matmeta.design.generator import Generator
from matmeta.design.output import summary_lines
from matmeta.design.request import DesignRequest
from matmeta.predict.predictor import Predictor

gen = Generator.load()  # the shipped decoder
predictor = Predictor.load("perovskites")  # the predictor the decoder designs for
print(f"decoder: {len(gen.elements)} elements, trained on gaps {gen.gap_range[0]:g}–{gen.gap_range[1]:.1f} eV")

# %% [markdown]
# ## 1 · Six candidates for 1.5–2.5 eV, relaxed
#
# A small request (six candidates, no exhaustive screen of the substitution space) keeps this notebook quick. The
# warning below is expected: without the training store (`--store out/perov.lmdb`) the decoder cannot be kept away
# from compositions it was trained on, so section 3 checks the candidates against the Castelli set directly.

# %%
request = DesignRequest(band_gap="2.0", gap_half_width=0.5, n=6, seed=0, max_draws=4000, screen=False, relax=True)
design = run_design(request, model="perovskites")
for line in summary_lines(design):
    print(line)

# %% [markdown]
# The table names each candidate A, B, anions (PbTiO3, not pymatgen's TiPbO3), with the sites as
# `matmeta.design.tolerance.site_roles` reads them from the cell (B: the cation nearest the anions).

# %%
from collections import Counter

from matmeta.design.tolerance import site_roles


def compound(structure):
    """The name of a 5-atom cell written A, B, anions (most abundant first)."""
    a, b, x = site_roles(structure)
    anions = sorted(Counter(x).items(), key=lambda item: (-item[1], item[0]))
    return "".join(a) + "".join(b) + "".join(f"{el}{count if count > 1 else ''}" for el, count in anions)


names = [compound(s) for s in design.generated]
candidates = pd.DataFrame(
    {
        "compound": name,
        "gap (eV)": r["band_gap_ev"],
        "± (eV)": r["band_gap_std_ev"],
        "P(metal)": r["p_metal"],
        "heat (eV/atom)": r["heat_ev_per_atom"],
        "tolerance t": r["tolerance_factor"],
        "gap relaxed (eV)": r.get("band_gap_ev_relaxed", np.nan),
        "after relaxation": r["relax_status"],
    }
    for r, name in zip(design.rows, names)
)
candidates.index = pd.RangeIndex(1, len(candidates) + 1, name="rank")
candidates.round(3)

# %% [markdown]
# All numbers are the predictor's, not DFT. Two things to read with care: the gap's ± is large (about 1 eV, the
# predictor's own spread), and the non-metal call is the predictor's calibrated cut, P(non-metal) ≥ 0.017, set on a
# training set where 96 % of the compounds are metals, so a candidate with P(metal) 0.8 can pass it. Candidates are
# ranked by distance to the window's centre plus 10 × P(metal); the ones that relaxation marked come last.
#
# **Hull distances** against Materials Project phases are not computed yet (a later issue); "stable" here means
# the predicted heat of formation and the tolerance factor only.
#
# ## 2 · The candidates as crystals, before and after relaxation
#
# Each picture is a 2×2×2 supercell of the 5-atom cell: top as the decoder proposed it (snapped to the ideal cubic
# prototype), bottom after CHGNet relaxation of positions and cell from a small seeded rattle.

# %%
from ase.data import atomic_numbers
from ase.data.colors import jmol_colors
from ase.visualize.plot import plot_atoms
from pymatgen.io.ase import AseAtomsAdaptor

n = len(design.rows)
fig, axes = plt.subplots(2, n, figsize=(1.75 * n, 4.0))
for i, row in enumerate(design.rows):
    for j, structure in enumerate((design.generated[i], design.relaxed[i])):
        ax = axes[j][i]
        ax.axis("off")
        if structure is None:
            ax.text(0.5, 0.5, "relaxation failed", ha="center", transform=ax.transAxes)
            continue
        plot_atoms(AseAtomsAdaptor.get_atoms(structure) * (2, 2, 2), ax, rotation="10x,-20y,0z", radii=0.45)
    axes[0][i].set_title(f"{i + 1}. {names[i]}", fontsize=9)
    axes[1][i].set_title(f"{row['relax_status']}\nRMSD {row['rmsd_ang']:.2f} Å, ΔV/V {row['volume_change']:+.0%}",
                         fontsize=7)
axes[0][0].text(-0.15, 0.5, "generated", rotation=90, va="center", transform=axes[0][0].transAxes)
axes[1][0].text(-0.15, 0.5, "relaxed", rotation=90, va="center", transform=axes[1][0].transAxes)
present = sorted({site.specie.symbol for st in design.generated for site in st}, key=lambda el: atomic_numbers[el])
key = [plt.Line2D([], [], ls="", marker="o", ms=8, mfc=jmol_colors[atomic_numbers[el]], mec="k") for el in present]
fig.legend(key, present, ncol=len(present), loc="lower center", fontsize=8, frameon=False, handletextpad=0.2)
fig.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()

# %%
labels = [f"{i + 1}. {name}" for i, name in enumerate(names)]
before = np.array([r["energy_before_ev_per_atom"] for r in design.rows])
after = np.array([r["energy_after_ev_per_atom"] for r in design.rows])
rmsd = np.array([r["rmsd_ang"] for r in design.rows])
status = [r["relax_status"] for r in design.rows]
palette = {"ok": "tab:blue", "left window": "tab:orange"}  # anything else (structure lost, failed): red
colour = [palette.get(st, "tab:red") for st in status]
y = np.arange(n)

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.9), sharey=True)
left.barh(y, after - before, color=colour)
left.set_xlabel("CHGNet energy, relaxed − generated (eV/atom)")
left.set_yticks(y, labels)
left.invert_yaxis()
right.barh(y, rmsd, color=colour)
right.axvline(0.1, color="k", ls=":", lw=0.8)
right.set_xlabel("RMSD of the atoms, generated → relaxed (Å)")
for ax in (left, right):
    ax.grid(axis="x", alpha=0.3)
handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange", "tab:red")]
fig.legend(handles, ["ok", "left the window", "lost the perovskite network"], fontsize=8, ncol=3,
           loc="upper center")
fig.tight_layout(rect=(0, 0, 1, 0.9))
plt.show()
for label, b, a, steps, sec in zip(labels, before, after, [r["relax_steps"] for r in design.rows],
                                   [r["relax_cpu_seconds"] for r in design.rows]):
    print(f"{label:14s} {b:8.3f} → {a:8.3f} eV/atom in {steps:3d} steps, {sec:.2f} CPU s")

# %% [markdown]
# Every candidate gains a few tens of meV/atom, much of it by adjusting its lattice constant (the decoder's cell is
# not CHGNet's: the four that keep their structure change volume by 1–9 %). The telling number is the RMSD of the
# atoms: a candidate near a local minimum of CHGNet moves little (here less than 0.1 Å, the dotted line). A large RMSD with a large energy gain means the ideal cubic cell was
# not a minimum and the atoms left the corner-sharing octahedra; `generate` then marks the candidate and ranks it
# last instead of returning it as a perovskite. A candidate can also keep its structure and still be marked because
# the gap predicted on the relaxed cell leaves the window.
#
# ## 3 · Are these compositions known? A check against the Castelli set
#
# The decoder and the predictor were trained on the Castelli perovskites (DFT, GLLB-SC gaps). A candidate whose
# A, B and anions are a Castelli compound can be checked against DFT directly; the others are new to that set.

# %%
import re

castelli = pd.read_csv(SHARED / "perovskites" / "perovskites.csv", usecols=["formula", "heat_ref", "ind_gap"])


def site_key(a, b, anions):
    return a, b, tuple(sorted(Counter(anions).items()))


def castelli_key(formula):
    """Castelli formulas are written A, B, anions (e.g. TlTaO3: Tl on A, Ta on B)."""
    tokens = [(el, int(n or 1)) for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula)]
    return site_key(tokens[0][0], tokens[1][0], [el for el, n in tokens[2:] for _ in range(n)])


dft = {castelli_key(f): (h / 5, g) for f, h, g in castelli.itertuples(index=False)}
known = []
for r, s, name in zip(design.rows, design.generated, names):
    a, b, x = site_roles(s)
    hit = dft.get(site_key(a[0], b[0], x))
    known.append({"compound": name, "predicted gap (eV)": r["band_gap_ev"],
                  "relaxed (eV)": r.get("band_gap_ev_relaxed", np.nan), "P(metal)": r["p_metal"],
                  "in Castelli": hit is not None, "DFT gap (eV)": hit[1] if hit else np.nan,
                  "DFT heat (eV/atom)": hit[0] if hit else np.nan})
pd.DataFrame(known, index=candidates.index).round(3)

# %% [markdown]
# Without the store the decoder rediscovers known compounds. Where DFT is at hand it is the judge: here three of the
# six are Castelli compounds, all DFT non-metals near the window (BaTaO2N and TlTaO3 at 2.0 eV, CdSiO3 at 2.7 eV, where
# the prediction on its relaxed cell also put it). On the first two the predictor's gaps are within 0.5 eV of DFT
# (closer after relaxation), while its P(metal) of 0.5 and 0.8 was too pessimistic. The others are not in the set;
# PbTiO3 is a known ferroelectric, tetragonal at room temperature, so a cubic cell that is not a CHGNet minimum is
# no surprise. With the training store, `generate` excludes the decoder's training compositions before any
# prediction (`--novel-only`, the default).
#
# ## 4 · How the decoder is steered
#
# The decoder is steered toward the gap by conditioning (optionally sharpened by classifier-free guidance on the
# species), then the predictor rejects what misses. The honest measure of the steering is the share of raw draws
# whose predicted gap lands in the window: most of the perovskite set is metallic, so an unsteered decoder mostly
# proposes metals.

# %%
from matmeta.design.judge import MetalCall

call = MetalCall.of(predictor)  # the predictor's own non-metal call, as in `matmeta predict`
mask = gen.element_mask()
variants = {
    "conditioned on 2 eV": gen.sample(200, torch.full((200,), 2.0), seed=1, element_mask=mask),
    "conditioned, guidance w = 3": gen.sample(200, torch.full((200,), 2.0), seed=1, element_mask=mask, guidance=3.0),
    "unconditioned": gen.sample(200, None, seed=1, element_mask=mask),
}
fig, ax = plt.subplots(figsize=(6, 2.8))
for label, structures in variants.items():
    rows = predictor.predict_structures(structures)
    gap = np.array([r["band_gap"] for r in rows])
    nonmetal = np.array([call.nonmetal(r) for r in rows])
    inside = np.mean(nonmetal & (gap >= 1.5) & (gap <= 2.5))
    ax.hist(gap[nonmetal], bins=np.linspace(0, 6, 25), histtype="step", lw=1.5,
            label=f"{label}: {np.mean(nonmetal):.0%} non-metal, {inside:.0%} in window")
ax.axvspan(1.5, 2.5, color="0.9", zorder=0)
ax.set_xlabel("predicted band gap of the predicted non-metals (eV)")
ax.set_ylabel("draws (of 200)")
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5 · Adapting to a family the decoder never saw: five zirconates
#
# Zr is a held-out B-site family (neither the decoder nor the predictor trained on it). Five ideal cubic AZrO3 cells
# are enough for the MAML inner loop to move the decoder toward Zr on the B site (`--family-examples my_cifs/`).

# %%
from pymatgen.core import Lattice, Structure


def cubic(a_site, b_site, a):
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"],
                     [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


examples = [cubic("Sr", "Zr", 4.15), cubic("Ba", "Zr", 4.19), cubic("Ca", "Zr", 4.02),
            cubic("Pb", "Zr", 4.13), cubic("La", "Zr", 4.20)]
zr_before = gen.sample(100, torch.full((100,), 3.0), seed=2, element_mask=mask)
gen.adapt(examples, seed=0)
zr_after = gen.sample(100, torch.full((100,), 3.0), seed=2, element_mask=mask)
gen.reset()
share = lambda ss: np.mean([s[1].specie.symbol == "Zr" for s in ss])  # noqa: E731
print(f"B = Zr: {share(zr_before):.0%} of draws before adaptation, {share(zr_after):.0%} after")
with_zr = sorted({compound(s) for s in zr_after if s[1].specie.symbol == "Zr"})
print(f"{len(with_zr)} distinct adapted draws with Zr on B, e.g.", ", ".join(with_zr[::3]))

# %% [markdown]
# ## 6 · What `matmeta generate --out` writes
#
# `candidates.csv` (every column above, and more) and one CIF per candidate: the relaxed cell, with the generated one
# beside it.

# %%
from matmeta.design.output import write_design

out = Path(tempfile.mkdtemp())
csv_path = write_design(design, out)
print(sorted(p.name for p in out.iterdir()))
print(pd.read_csv(csv_path).shape[1], "columns in", csv_path.name)
