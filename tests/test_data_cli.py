import csv
import json
import subprocess
import sys
import urllib.error

import pytest
from pymatgen.io.cif import CifWriter

from matmeta.errors import MatmetaError, MatmetaInputError
from matmeta.io import write_cif
from matmeta.store import download as dl
from matmeta.store.ingest import ingest
from matmeta.store.reader import GraphStore


def matmeta(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "matmeta.cli", *map(str, args)], capture_output=True, text=True, env=env
    )


def write_csv(path, columns, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_ingest_and_families_from_the_command_line(tmp_path, srtio3, nacl):
    rows = []
    for k, (a, b) in enumerate([("Sr", "Ti"), ("Ba", "Ti"), ("Ca", "Zr"), ("Sr", "Zr")]):
        structure = srtio3.copy()
        structure.replace_species({"Sr": a, "Ti": b})
        rows.append({"id": f"m{k}", "cif": str(CifWriter(structure)), "gap": 3.0 + k})
    rows.append({"id": "bad", "cif": str(CifWriter(nacl))[:250], "gap": 1.0})
    table = write_csv(tmp_path / "m.csv", ["id", "cif", "gap"], rows)
    out = tmp_path / "m.lmdb"
    result = matmeta("data", "ingest", table, "--id-column", "id", "--target", "gap", "--out", out, "--workers", 1)
    assert result.returncode == 1  # one bad row: reported, the rest stored
    assert "m.csv row 5:" in result.stderr and "Traceback" not in result.stderr
    assert GraphStore(out).ids == ["m0", "m1", "m2", "m3"]
    result = matmeta("data", "families", out, "--by", "b_site", "--out", tmp_path / "fam.json")
    assert result.returncode == 0, result.stderr
    assert "Ti" in result.stdout and "Zr" in result.stdout
    families = json.loads((tmp_path / "fam.json").read_text())
    assert [(f["family"], f["size"], f["gap_mean"]) for f in families] == [("Ti", 2, 3.5), ("Zr", 2, 5.5)]


def test_command_line_errors_are_one_line(tmp_path, nacl):
    table = write_csv(tmp_path / "x.csv", ["id", "structure"], [{"id": "1", "structure": "?"}])
    result = matmeta("data", "ingest", table, "--out", tmp_path / "x.lmdb")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {table}: missing column(s) cif (columns: id, structure)"
    write_cif(nacl, tmp_path / "s" / "NaCl.cif")
    ingest(tmp_path / "s", tmp_path / "s.lmdb", workers=1)
    result = matmeta("data", "families", tmp_path / "s.lmdb", "--by", "b_site")
    assert result.returncode == 0 and "Traceback" not in result.stderr and "(undefined)" in result.stdout
    line = result.stderr.strip()  # listed as "(undefined)", with one warning line saying why
    assert "\n" not in line and line.startswith(f"warning: {tmp_path / 's.lmdb'}: b_site is undefined for 1 record(s)")
    assert line.endswith("NaCl.cif: not an ABX3 perovskite (4 cations, 4 anions; b_site/a_site need A B X3)")


def fake_split(folder, n_rows, srtio3, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    cif = str(CifWriter(srtio3))
    for split, count in (("train", n_rows), ("val", 2), ("test", 2)):
        rows = [{"material_id": f"{split}{start + i}", "cif": cif, "energy_per_atom": -9.0} for i in range(count)]
        write_csv(folder / f"{split}.csv", ["material_id", "cif", "energy_per_atom"], rows)
    return folder


def test_download_from_a_local_copy_is_verified(tmp_path, monkeypatch, srtio3):
    info = dl.DatasetInfo("carbon24", "carbon_24", ("material_id", "cif", "energy_per_atom"), 10, "test copy")
    monkeypatch.setitem(dl.DATASETS, "carbon24", info)
    source = fake_split(tmp_path / "src", 6, srtio3)
    folder = dl.download("carbon24", tmp_path / "data", from_path=source)
    manifest = json.loads((folder / dl.MANIFEST).read_text())
    assert manifest["rows"] == {"train": 6, "val": 2, "test": 2}
    assert manifest["sha256"]["train"] == dl.sha256(source / "train.csv")
    assert [p.name for p in dl.dataset_files("carbon24", tmp_path / "data")] == ["train.csv", "val.csv", "test.csv"]
    (folder / "val.csv").write_text("material_id,cif,energy_per_atom\n")  # tampered after download
    with pytest.raises(MatmetaInputError, match="checksum differs"):
        dl.dataset_files("carbon24", tmp_path / "data")
    short = fake_split(tmp_path / "short", 1, srtio3)
    with pytest.raises(MatmetaInputError, match="5 rows in train, val, test; carbon24 has 10"):
        dl.download("carbon24", tmp_path / "other", from_path=short)
    assert not (tmp_path / "other" / "carbon24" / "train.csv").exists()  # nothing unverified is kept


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    with pytest.raises(
        MatmetaError,
        match=r"cannot download https://raw.githubusercontent.com/txie-93/cdvae/main/"
        r"data/perov_5/train.csv .*--from PATH",
    ):
        dl.download("perovskites", tmp_path)
    with pytest.raises(MatmetaInputError, match="unknown dataset"):
        dl.download("qm9", tmp_path)
    with pytest.raises(MatmetaInputError, match="not downloaded"):
        dl.dataset_files("mp20", tmp_path)


def test_ingest_benchmark_quick_run(perovskites_csv, tmp_path, monkeypatch, capsys):
    from matmeta.runs import bench as run_bench

    monkeypatch.setenv("MATMETA_SHARED_DATA", str(perovskites_csv.parents[1]))
    recipe = tmp_path / "ingest.toml"
    recipe.write_text(f'[bench]\nname = "ingest"\nout_dir = "{tmp_path / "bench"}"\n')
    run_bench(recipe, quick=True)
    lines = (tmp_path / "bench" / "results.csv").read_text().splitlines()
    assert lines[0] == "stage,implementation,structures,seconds,structures/s,note"
    stages = [line.split(",")[0].strip('"') for line in lines[1:]]
    assert (
        stages
        == ["CIF parsing"] * 4
        + ["graph construction"] * 2
        + ["family keys"] * 2
        + ["full ingest"] * 2
        + ["store reads"] * 3
        + ["family keys"]  # the symmetry keys of the first reader
    )
    counts = [int(line.split(",")[2]) for line in lines[1:]]
    assert counts[2:] == [150] * 12  # every matmeta stage saw all 150 quick rows (none refused)
    assert all(float(line.split(",")[4]) > 0 for line in lines[1:])
    assert "ingest benchmark" in capsys.readouterr().out
