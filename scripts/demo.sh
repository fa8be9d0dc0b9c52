#!/usr/bin/env bash
# `make demo`: what matmeta does, on the example data shipped in data/ (a few minutes on 2 cores).
# Outputs go to out/demo/ (gitignored). With the shared perovskites beside the repo
# ($MATMETA_SHARED_DATA, default ../shared/data) it also builds the full graph store, which
# `generate` then uses to judge novelty.
set -euo pipefail
mkdir -p out/demo
SHARED="${MATMETA_SHARED_DATA:-../shared/data}"

echo "== 1. graph stores: ingest structures and show their families"
rm -rf out/demo/examples.lmdb out/demo/other.lmdb
matmeta data ingest data/structures --targets-csv data/lab_perovskites.csv --id-column name \
  --target band_gap --allow-missing-targets --out out/demo/examples.lmdb
matmeta data families out/demo/examples.lmdb --by prototype
matmeta data ingest data/structures_other --targets-csv data/structures_other/targets.csv \
  --target band_gap --out out/demo/other.lmdb
matmeta data families out/demo/other.lmdb --by anion_set
STORE_ARGS=()
if [ -f "$SHARED/perovskites/perovskites.csv" ]; then
  # Resumable and idempotent: a second demo run finds every record already present.
  matmeta data ingest "$SHARED/perovskites/perovskites.csv" --cif-column cif --id-column material_id \
    --target heat_ref --target ind_gap --target dir_gap --out out/perov.lmdb
  matmeta data families out/perov.lmdb --by anion_set
  STORE_ARGS=(--store out/perov.lmdb)
else
  echo "(no $SHARED/perovskites/perovskites.csv: skipping the full store; generate will not judge novelty)"
fi

echo
echo "== 2. predict formation energy and PBE band gap of common materials with the shipped Materials Project model"
matmeta predict data/structures --out out/demo/predictions.csv

echo
echo "== 3. few-shot: adapt the measured-level band gap to 25 measured cadmium compounds (a family it never saw)"
matmeta predict data/lab --out out/demo/cd_before.csv
matmeta finetune --support data/lab_measurements.csv --target band_gap --out out/demo/cd.ckpt
matmeta predict data/lab --model out/demo/cd.ckpt --out out/demo/cd_after.csv

echo
echo "== 4. which lab measurements steered the adapted band gap of SrTiO3 (the perovskite model, oxide perovskites)"
matmeta explain --model perovskites --support data/lab_perovskites.csv --target band_gap \
  --query data/structures/SrTiO3.cif --top 5 --plot out/demo/influence.png

echo
echo "== 5. inverse design: candidates for a 2 eV band gap, checked and ranked"
# a small request for the demo (-n 100 with the default 50,000-draw budget takes minutes on 2 cores)
matmeta generate --band-gap 2.0 --gap-half-width 0.3 -n 20 --max-draws 10000 --seed 0 --out out/demo/candidates \
  "${STORE_ARGS[@]}"

echo
echo "== 5b. inverse design in a real family: adapt the family decoder to 5 rock-salt examples, 4 eV, judged on the mp36k hull"
if [ -f "$SHARED/mp/mp36k.csv" ]; then
  matmeta generate --family-examples data/family_examples/rocksalt --band-gap 4.0 -n 5 --seed 0 --out out/demo/rocksalt
else
  echo "(no $SHARED/mp/mp36k.csv: skipping; the known hull is built from it)"
fi

echo
echo "== 6. JMAK kinetics from sparse points with the meta-learned prior (plot: out/demo/jmak.png)"
matmeta jmak fit data/jmak_points.csv --plot out/demo/jmak.png --out out/demo/jmak_fits.csv

if [ -f "$SHARED/jmak/ttt_steel.csv" ]; then
  echo
  echo "== 7. a whole TTT diagram of the shared steel: joint fit per phase (plot: out/demo/ttt.png)"
  matmeta jmak ttt "$SHARED/jmak/ttt_steel.csv" --plot out/demo/ttt.png --out out/demo/ttt_fits.csv
fi

echo
echo "demo outputs in out/demo/"
