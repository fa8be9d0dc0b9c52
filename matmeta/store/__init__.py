"""The LMDB graph store: reader, resumable ingest, records, shared data sets, download."""
