import csv
import json
import pickle
import re
import subprocess
import sys
import textwrap
from collections import Counter

import lmdb
import numpy as np
import pytest
import torch
from pymatgen.io.cif import CifWriter

from matmeta.errors import MatmetaInputError, StoreError
from matmeta.graphs import GraphConfig, structure_to_graph
from matmeta.io import parse_cif, read_csv, write_cif
from matmeta.store.ingest import ingest
from matmeta.store.reader import GraphStore
from matmeta.store.records import IngestSettings, decode_record

TARGETS = ("heat_ref", "ind_gap")


def write_rows(path, columns, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def slice_csv(perovskites_csv, tmp_path):
    columns, rows = read_csv(perovskites_csv)
    return write_rows(tmp_path / "slice.csv", columns, rows[:300]), rows[:300]


def quiet(errors):
    return lambda message: errors.append(message)


def test_ingest_300_perovskites(slice_csv, tmp_path):
    path, rows = slice_csv
    report = ingest(path, tmp_path / "p.lmdb", targets=TARGETS, id_column="material_id", workers=2)  # forked workers
    assert report.ok and report.added == 300 and report.total == 300
    store = GraphStore(tmp_path / "p.lmdb")
    assert len(store) == 300 and store.target_names == TARGETS
    assert store.ids == [r["material_id"] for r in rows]
    expected = np.array([[float(r[t]) for t in TARGETS] for r in rows])
    assert np.allclose(store.targets, expected, atol=1e-6)
    assert store.graph_config == GraphConfig() and store.metadata["count"] == 300
    # family counts: anion sets counted independently from the formula column
    from_formula = Counter(re.sub(r"^[A-Z][a-z]?[A-Z][a-z]?", "", r["formula"]) for r in rows)  # "SrTiO3" → "O3"
    assert Counter(store.family_keys("anion_set")) == from_formula
    b_sites = Counter(store.family_keys("b_site"))
    assert sum(b_sites.values()) == 300 and len(b_sites) >= 40
    assert store.family_keys("column:formula") == [r["formula"] for r in rows]
    # a stored graph is the graph of the parsed CIF
    for i in (0, 123, 299):
        graph = store[i]
        fresh = structure_to_graph(parse_cif(rows[i]["cif"], "x"), GraphConfig())
        for name in ("atomic_numbers", "edge_index", "cell_offsets", "edge_dist", "pos"):
            assert torch.equal(getattr(graph, name), getattr(fresh, name)), name
        assert graph.y.tolist() == [[pytest.approx(float(rows[i][t]), abs=1e-6) for t in TARGETS]]
        assert store.cif(i) == rows[i]["cif"]
        assert store.structure(i).composition == parse_cif(rows[i]["cif"], "x").composition
    assert store[-1].num_nodes == 5
    with pytest.raises(IndexError):
        store[300]


def test_rerun_is_idempotent_and_settings_are_checked(slice_csv, tmp_path):
    path, _ = slice_csv
    out = tmp_path / "p.lmdb"
    ingest(path, out, targets=TARGETS, id_column="material_id", workers=1, limit=40)
    again = ingest(path, out, targets=TARGETS, id_column="material_id", workers=1, limit=40)
    assert again.already_present == 40 and again.added == 40 and again.total == 80
    with pytest.raises(StoreError, match="built with cutoff_angstrom=6, max_neighbors=12; asked for cutoff_angstrom=5"):
        ingest(path, out, GraphConfig(5.0, 12), targets=TARGETS, id_column="material_id", workers=1)
    with pytest.raises(StoreError, match="store targets are heat_ref, ind_gap"):
        ingest(path, out, targets=("heat_ref",), id_column="material_id", workers=1)
    with pytest.raises(StoreError, match="max_neighbors=8"):
        GraphStore(out, graph_config=GraphConfig(6.0, 8))
    GraphStore(out).close()  # LMDB allows one handle per path and process
    env = lmdb.open(str(out), map_size=1 << 30)
    with env.begin(write=True) as txn:
        meta = json.loads(txn.get(b"__meta__"))
        meta["format_version"] = 99
        txn.put(b"__meta__", json.dumps(meta).encode())
    env.close()
    with pytest.raises(StoreError, match="store format 99 was written by a newer matmeta"):
        GraphStore(out)
    with pytest.raises(StoreError, match="newer matmeta"):
        ingest(path, out, targets=TARGETS, id_column="material_id", workers=1)
    with pytest.raises(StoreError, match="no graph store here"):
        GraphStore(tmp_path / "nothing.lmdb")


def test_interrupted_ingest_resumes_to_the_same_store(slice_csv, tmp_path):
    path, _ = slice_csv
    killed = tmp_path / "killed.lmdb"
    script = textwrap.dedent(
        f"""
        import os, signal
        from matmeta.store.ingest import ingest

        def stop(count):
            if count >= 100:
                os.kill(os.getpid(), signal.SIGKILL)  # dies without any cleanup, mid-ingest

        if __name__ == "__main__":
            ingest({str(path)!r}, {str(killed)!r}, targets={TARGETS!r}, id_column="material_id",
                   workers=1, batch_size=25, on_batch=stop)
        """
    )
    (tmp_path / "run.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    partial = GraphStore(killed)  # stays open: a reader in this process must not block the resumed ingest
    assert len(partial) == 100 and len(set(partial.ids)) == 100
    report = ingest(path, killed, targets=TARGETS, id_column="material_id", workers=1)
    assert report.already_present == 100 and report.added == 200
    resumed = GraphStore(killed)
    assert len(partial) == 100 and partial.ids[:100] == resumed.ids[:100]  # the old view still reads
    fresh_report = ingest(path, tmp_path / "fresh.lmdb", targets=TARGETS, id_column="material_id", workers=1)
    assert fresh_report.added == 300
    fresh = GraphStore(tmp_path / "fresh.lmdb")
    assert resumed.ids == fresh.ids and len(set(resumed.ids)) == 300
    assert np.array_equal(resumed.targets, fresh.targets)
    for i in (0, 99, 100, 299):
        assert torch.equal(resumed[i].edge_index, fresh[i].edge_index)
        assert torch.equal(resumed[i].edge_vec, fresh[i].edge_vec)


def test_bad_rows_are_reported_and_good_rows_stored(slice_csv, tmp_path):
    path, rows = slice_csv
    columns = list(rows[0])
    rows = [dict(r) for r in rows[:12]]
    rows[1]["cif"] = rows[1]["cif"][: len(rows[1]["cif"]) // 2]  # truncated
    rows[2]["cif"] = "\x01\x02\x7fgarbage\x03" * 20  # binary garbage
    lines = rows[3]["cif"].rstrip("\n").split("\n")
    symbol = lines[-1].split()[0]
    lines[-1] = lines[-1].replace(f"  {symbol}  ", "  Xx  ", 1)  # last atom row: an unknown element
    rows[3]["cif"] = "\n".join(lines) + "\n"
    rows[4]["heat_ref"] = "nan"
    rows[5]["ind_gap"] = "inf"
    rows[6]["material_id"] = rows[0]["material_id"]  # duplicate id
    bad = write_rows(tmp_path / "bad.csv", columns, rows)
    errors = []
    report = ingest(
        bad, tmp_path / "b.lmdb", targets=TARGETS, id_column="material_id", workers=1, on_error=quiet(errors)
    )
    assert report.added == 6 and len(report.errors) == 6 and errors == report.errors
    text = "\n".join(errors)
    assert "bad.csv row 2: truncated or malformed CIF" in text or "bad.csv row 2: not a" in text
    assert "bad.csv row 3: " in text
    assert "bad.csv row 4: unknown element 'Xx'" in text
    assert "bad.csv row 5: target heat_ref is missing/NaN" in text
    assert "bad.csv row 6: target ind_gap=inf is not finite" in text
    assert f"bad.csv row 7: duplicate id '{rows[0]['material_id']}' (first at row 1)" in text
    store = GraphStore(tmp_path / "b.lmdb")
    assert store.ids == [rows[i]["material_id"] for i in (0, 7, 8, 9, 10, 11)]
    allowed = ingest(
        bad,
        tmp_path / "nan.lmdb",
        targets=TARGETS,
        id_column="material_id",
        workers=1,
        settings=IngestSettings(allow_missing_targets=True),
        on_error=quiet([]),
    )
    assert np.isnan(GraphStore(tmp_path / "nan.lmdb").targets).any() and allowed.added == 7
    no_cif = write_rows(tmp_path / "nocif.csv", ["material_id", "heat_ref"], [{"material_id": "1", "heat_ref": "1"}])
    with pytest.raises(MatmetaInputError, match=r"nocif.csv: missing column\(s\) cif"):
        ingest(no_cif, tmp_path / "c.lmdb", targets=("heat_ref",), id_column="material_id", workers=1)


def test_structure_files_with_targets_and_two_workers(tmp_path, nacl, cu, srtio3):
    folder = tmp_path / "structures"
    for name, structure in {"NaCl": nacl, "Cu": cu, "SrTiO3": srtio3}.items():
        write_cif(structure, folder / f"{name}.cif")
    (folder / "broken.cif").write_text(str(CifWriter(srtio3))[:300])
    targets = write_rows(
        tmp_path / "t.csv",
        ["id", "gap", "note"],
        [
            {"id": n, "gap": g, "note": n.lower()}
            for n, g in (("NaCl", 8.5), ("Cu", 0), ("SrTiO3", 3.25), ("broken", 1))
        ],
    )
    errors = []
    report = ingest(
        folder,
        tmp_path / "f.lmdb",
        targets=("gap",),
        targets_csv=targets,
        workers=2,
        start_method="spawn",
        chunk_size=1,
        on_error=quiet(errors),
    )
    assert report.added == 3 and len(errors) == 1 and "broken.cif" in errors[0]
    store = GraphStore(tmp_path / "f.lmdb")
    assert store.ids == ["Cu", "NaCl", "SrTiO3"]
    assert store.targets[:, 0].tolist() == [0.0, 8.5, 3.25]
    assert store.family_keys("column:note") == ["cu", "nacl", "srtio3"]
    assert store.family_keys("anion_set") == ["none", "Cl", "O3"]
    # the space group is not searched at ingest, but found from the stored cell on first use
    assert "spacegroup" not in store.record(0)[1]["families"]
    assert store.family_keys("spacegroup") == ["Fm-3m", "Fm-3m", "Pm-3m"]
    assert "spacegroup" in store.family_kinds()
    with pytest.raises(MatmetaInputError, match="b_site is undefined for 2 record"):
        store.family_keys("b_site")
    with pytest.raises(MatmetaInputError, match="no family kind 'colour'"):
        store.family_keys("colour")
    with pytest.raises(MatmetaInputError, match="--targets-csv"):
        ingest(folder, tmp_path / "g.lmdb", targets=("gap",))


def test_pool_workers_start_with_the_default_sigterm_whatever_the_parent_holds():
    """A parent's own SIGTERM handler (Flower's server left one) must not reach the workers: they would run
    it instead of stopping on ``Pool.terminate()``, and the ingest hung in its final join."""
    import signal

    from matmeta.store.pool import worker_pool

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        pool = worker_pool(2, "fork")
        try:
            handlers = pool.map(signal.getsignal, [signal.SIGTERM, signal.SIGTERM], chunksize=1)
        finally:
            pool.close()
            pool.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [signal.SIG_DFL, signal.SIG_DFL]


def test_records_are_safetensors_and_the_store_pickles(tmp_path, srtio3):
    from safetensors.numpy import load

    write_cif(srtio3, tmp_path / "s" / "SrTiO3.cif")
    ingest(tmp_path / "s", tmp_path / "s.lmdb", workers=1)
    store = GraphStore(tmp_path / "s.lmdb")
    graph = store[0]
    raw = store._raw(0)
    arrays = load(raw)  # the plain safetensors reader understands a record
    assert np.array_equal(arrays["edge_index"], graph.edge_index.numpy())
    assert decode_record(raw)[1]["families"]["b_site"] == "Ti"
    clone = pickle.loads(pickle.dumps(store))
    assert torch.equal(clone[0].edge_index, graph.edge_index)
    graph.edge_dist += 1  # tensors are writable and private to the caller
    assert not torch.equal(store[0].edge_dist, graph.edge_dist)
    loader = torch.utils.data.DataLoader(store, batch_size=1, collate_fn=lambda items: items)
    assert len(list(loader)) == 1
    # forked workers must not reuse the parent's LMDB handle (opened above): they reopen their own
    forked = torch.utils.data.DataLoader(
        store, batch_size=1, num_workers=2, multiprocessing_context="fork", collate_fn=lambda items: items
    )
    assert [batch[0].num_nodes for batch in forked] == [5]


def test_multi_frame_file_is_resumable(tmp_path, nacl, cu):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    ase.io.write(tmp_path / "two.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in (nacl, cu)], format="extxyz")
    errors = []
    first = ingest(tmp_path / "two.extxyz", tmp_path / "x.lmdb", workers=1, on_error=quiet(errors))
    again = ingest(tmp_path / "two.extxyz", tmp_path / "x.lmdb", workers=1, on_error=quiet(errors))
    assert (first.added, again.added, again.already_present, errors) == (2, 0, 2, [])
    store = GraphStore(tmp_path / "x.lmdb")
    assert store.ids == ["two:0", "two:1"] and [store[i].num_nodes for i in range(2)] == [8, 4]


def test_fast_decode_survives_tricky_metadata():
    from matmeta.store.records import GRAPH_FIELDS, decode_arrays, encode_record

    arrays = {
        "atomic_numbers": np.arange(3, dtype=np.int64),
        "edge_index": np.array([[0, 1], [1, 0]], dtype=np.int64),
        "y": np.array([[1.5]], dtype=np.float32),
        "cif": np.frombuffer(b'data_x "},"', dtype=np.uint8),
    }
    for rid in ("plain", 'a"},"b', '{"}","x":[1,2]}', "back\\\\slash"):
        raw = encode_record(arrays, {"id": rid, "families": {"column:note": 'x"},"' + rid}})
        fast = decode_arrays(raw, ("atomic_numbers", "edge_index", "y"))
        slow, info = decode_record(raw)
        assert info["id"] == rid
        for key in fast:
            assert np.array_equal(fast[key], slow[key]) and fast[key].dtype == slow[key].dtype
    assert "edge_vec" in GRAPH_FIELDS
