#!/usr/bin/env bash
# `make demo`: what matmeta does, on the example data shipped in data/ (runs in a minute on a laptop).
# Each app appends its part below; outputs go to out/demo/ (gitignored).
set -euo pipefail
mkdir -p out/demo

echo "== 1. graph stores: ingest the example structures and show their families"
rm -rf out/demo/examples.lmdb out/demo/other.lmdb
matmeta data ingest data/structures --targets-csv data/lab_measurements.csv --id-column name \
  --target band_gap --out out/demo/examples.lmdb
matmeta data families out/demo/examples.lmdb --by b_site
matmeta data ingest data/structures_other --targets-csv data/structures_other/targets.csv \
  --target band_gap --out out/demo/other.lmdb
matmeta data families out/demo/other.lmdb --by anion_set
