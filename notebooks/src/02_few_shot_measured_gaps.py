# %% [markdown]
# # Measured band gaps from a few measurements
#
# DFT at the PBE level underestimates band gaps, by an amount that depends on the chemistry. matmeta's
# predictor carries a *fidelity head* on top of its PBE network: meta-learned across families of measured
# gaps (families = the compound's cation, each family a task, `recipes/expt_gap.toml`), so that a new
# family's few measurements adapt it in a handful of inner steps.
#
# Here, on the measured-gap families held out from that training: the error against the number of
# measurements k for MAML, plain fine-tuning (Adam, same start before meta-learning, same steps), a linear
# recalibration of the PBE prediction, the zero-shot head and a composition model (gradient-boosted trees on
# element statistics, trained on every other measured formula). Then one real family adapted, before and after.

# %%
import csv
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from matmeta.predict.predictor import Predictor

REPO = Path.cwd().parent
SHARED = Path(os.environ.get("MATMETA_SHARED_DATA", REPO.parent / "shared" / "data"))
predictor = Predictor.load()
entry = predictor.metadata["measured_gap"]
print("test families (cation):", entry["families"]["test"])

# %% [markdown]
# ## The held-out families, through the PBE network once
# Each measured gap with a Materials Project structure (joined by id) is run through the network once; the
# head reads the network's PBE gap, metal logit and features.

# %%
from matmeta.families import family_key
from matmeta.io import parse_cif
from matmeta.predict.measured_train import fidelity_table

csv.field_size_limit(1 << 30)
cifs = {row["material_id"]: row["cif"] for row in csv.DictReader((SHARED / "mp" / "mp36k.csv").open())}
expt = list(csv.DictReader((SHARED / "expt_gaps" / "expt_gaps.csv").open()))
wanted = set(entry["families"]["test"]) | set(entry["families"]["val"])
by_id = {}
for row in expt:
    if row["material_id"] in cifs:
        by_id.setdefault(row["material_id"], []).append(float(row["band_gap_expt"]))
graphs, gaps, families, formulas = [], [], [], []
for mp_id, values in by_id.items():
    structure = parse_cif(cifs[mp_id], mp_id)
    family = family_key(structure, "cation")
    if family not in wanted:
        continue
    values = np.array(values)
    gaps.append(0.0 if np.mean(values == 0) > 0.5 else float(values[values > 0].mean()))  # as the training data
    (graph,), _ = predictor.graphs([structure])
    graphs.append(graph)
    families.append(family)
    formulas.append(structure.composition.reduced_formula)
table = fidelity_table(predictor, graphs, np.array(gaps), families, formulas)
print(f"{len(table)} measured structures in the test and validation families")

# %%
from matmeta.bench.composition_peer import CompositionPeer
from matmeta.bench.fewshot_expt_gap import adam_finetune, choose_lr, measured_outputs_of, pooled_head
from matmeta.predict.adaptation import fit_linear
from matmeta.predict.measured import loss_fn, measured_outputs, reported_gap

head, cut = predictor.measured, predictor.measured_cut
pooled = pooled_head(predictor)
names = np.asarray(table.families)
truth_all = table.gap.numpy()


def episodes(fams, k, per_family, seed):
    rng = np.random.default_rng(seed)
    for family in fams:
        members = np.flatnonzero(names == family)
        if len(members) >= k + 5:
            for _ in range(per_family):
                order = rng.permutation(members)
                yield family, k, order[:k], order[k : k + 30]


lr, _ = choose_lr(predictor, pooled, table, list(episodes(entry["families"]["val"], 10, 3, 1)), (0.001, 0.01, 0.03))
print(f"fine-tune learning rate chosen on validation families: {lr:g}")

# %% [markdown]
# The composition peer needs no structure, so it trains on every measured formula outside the test families.

# %%
from matmeta.predict.measured_data import composition_key

peer_train = [(r["formula"], float(r["band_gap_expt"])) for r in expt
              if composition_key(r["formula"], "cation") not in set(entry["families"]["test"])]
peer = CompositionPeer(0).fit([f for f, _ in peer_train], np.array([g for _, g in peer_train]))
print(f"composition peer trained on {len(peer_train)} measured formulas")

# %%
ks = (3, 5, 10)
methods = ("zero-shot head", "MAML (adapted head)", "fine-tune (Adam)", "PBE + linear", "composition peer")
errors = {m: [] for m in methods}
for k in ks:
    found = {m: [] for m in methods}
    for family, _, support, query in episodes(entry["families"]["test"], k, 10, k):
        truth = truth_all[query]
        nonmetal = truth > 0
        if not nonmetal.any():
            continue

        def add(method, out):
            found[method].extend(np.abs(reported_gap(out[:, 0], out[:, 1], cut) - truth)[nonmetal])

        add("zero-shot head", measured_outputs(head, table.inputs(query)))
        add("MAML (adapted head)", measured_outputs(head, table.inputs(query), head.adapt(table.rows(support), loss_fn)))
        add("fine-tune (Adam)", measured_outputs_of(adam_finetune(pooled, table.rows(support), head.inner_steps, lr),
                                                    table.inputs(query)))
        s_nm = truth_all[support] > 0
        scale, shift = fit_linear(table.gap_pbe.numpy()[support][s_nm], truth_all[support][s_nm]) if s_nm.any() else (1, 0)
        pbe_call = 1 - 1 / (1 + np.exp(-table.logit_pbe.numpy()[query])) >= predictor.nonmetal_cut
        found["PBE + linear"].extend(np.abs(np.where(pbe_call, np.clip(scale * table.gap_pbe.numpy()[query] + shift, 0, None),
                                                     0.0) - truth)[nonmetal])
        peer_out = peer.predict([table.formulas[i] for i in query])
        found["composition peer"].extend(np.abs(peer.reported(peer_out) - truth)[nonmetal])
    for m in methods:
        errors[m].append(np.mean(found[m]))
fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
for m in methods:
    ax.plot(ks, errors[m], "o-", label=m)
ax.set_xlabel("measurements of the new family (k)")
ax.set_ylabel("MAE on measured non-metals (eV)")
ax.set_xticks(ks)
ax.legend(fontsize=8)
ax.set_title("held-out measured-gap families")
plt.show()
for m in methods:
    print(f"{m:22s} " + "  ".join(f"k={k}: {e:.3f}" for k, e in zip(ks, errors[m])))

# %% [markdown]
# ## One real family: 25 cadmium compounds
# `data/lab_measurements.csv` is the Cd family of the shared measured gaps (a test family). `matmeta finetune`
# keeps the best of four candidates by leave-one-out; each point below is predicted without its own measurement.

# %%
from matmeta.predict.support import read_support

names_, structures, values, bad = read_support(REPO / "data" / "lab_measurements.csv", "band_gap", None, "path", "cif")
adapted, report = predictor.finetune(structures, values, "band_gap", names=names_)
print(report.message())
before = np.array(report.loo_by_candidate["unadapted"])
after = np.array(report.loo_by_candidate[report.kept])
fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=90)
ax.scatter(values, before, label=f"zero-shot (MAE {np.mean(np.abs(before - values)):.2f} eV)")
ax.scatter(values, after, label=f"{report.kept}, leave-one-out (MAE {np.mean(np.abs(after - values)):.2f} eV)")
ax.plot([0, 6.5], [0, 6.5], "k--", lw=1)
ax.set_xlabel("measured gap (eV)")
ax.set_ylabel("predicted measured-level gap (eV)")
ax.legend(fontsize=8)
plt.show()
