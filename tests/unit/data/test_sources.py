"""`patchray ingest` / `dataset show|validate` on tiny sources generated in tmp_path."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from patchray import cli
from patchray.data import ingest
from patchray.data.records import PATCH_SCHEMA, decode_image, decode_record_image, encode_png, pixel_sha256
from patchray.data.sources import PcamSource, create_source
from patchray.errors import DataError

RNG = np.random.default_rng(7)


def _pixels(h: int = 50, w: int = 50) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _idc(root: Path, patient: str, label: int, x: int, y: int, *, pixels=None,
         name_label: int | None = None) -> Path:
    name = f"{patient}_idx5_x{x}_y{y}_class{label if name_label is None else name_label}.png"
    path = root / patient / str(label) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(_pixels() if pixels is None else pixels))
    return path


@pytest.fixture
def idc_tree(tmp_path) -> Path:
    """Three patients, both labels each, one 32-wide edge patch: a clean IDC tree."""
    root = tmp_path / "idc"
    for p in ("101", "202", "303"):
        for i in range(3):
            _idc(root, p, i % 2, 51 + 50 * i, 1)
    _idc(root, "202", 0, 3601, 1701, pixels=_pixels(50, 32))
    return root


def _run(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def _rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [r for s in ("train", "val", "test", "unlabelled")
            for f in manifest["splits"].get(s, {}).get("files", [])
            for r in pq.read_table(out / f, page_checksum_verification=True).to_pylist()]


def _report(out: Path) -> dict[str, str]:
    rows = list(csv.DictReader(io.StringIO((out / "ingest_report.csv").read_text())))
    assert json.loads((out / "ingest_report.json").read_text())["rejected"] == rows
    return {r["file"]: r["reason"] for r in rows}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- IDC


def test_idc_records_carry_path_fields_native_size_and_pixel_hash(idc_tree, tmp_path):
    out = tmp_path / "ds"
    assert _run("ingest", "idc", idc_tree, "--out", out, "--set", "data.split.seed=1") == 0
    rows = _rows(out)
    assert len(rows) == 10
    edge = next(r for r in rows if r["x"] == 3601)
    assert edge | {"image": None, "sha256": None} == {
        "image": None, "label": 0, "patient_id": "202", "slide_id": "202", "x": 3601, "y": 1701,
        "height": 50, "width": 32, "source": "202/0/202_idx5_x3601_y1701_class0.png",
        "sha256": None,
    }
    original = decode_image((idc_tree / edge["source"]).read_bytes())
    assert np.array_equal(decode_image(edge["image"]), original)  # lossless re-encode
    assert edge["sha256"] == pixel_sha256(original)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"seen": 10, "written": 10, "rejected": 0, "ignored": 0}
    assert manifest["undersized_patches"] == 1
    assert manifest["patch_sizes"] == {"50x32": 1, "50x50": 9}
    assert manifest["split_rule"]["by"] == "patient"
    patients = {s: len(v["patients"]) for s, v in manifest["splits"].items()}
    assert patients == {"train": 1, "val": 1, "test": 1}
    assert pq.read_schema(out / manifest["splits"]["train"]["files"][0]).equals(PATCH_SCHEMA)


def test_bad_inputs_are_rejected_with_reasons_and_exit_3(idc_tree, tmp_path):
    good = _idc(idc_tree, "101", 1, 901, 901)
    truncated = _idc(idc_tree, "101", 0, 951, 1)
    truncated.write_bytes(truncated.read_bytes()[:60])
    text = idc_tree / "101/0/101_idx5_x1001_y1_class0.png"
    text.write_text("not a png")
    grey = idc_tree / "303/1/303_idx5_x1051_y1_class1.png"
    Image.fromarray(_pixels()[..., 0], mode="L").save(grey)
    dup = _idc(idc_tree, "303", 1, 1101, 1, pixels=decode_image(good.read_bytes()))
    mismatch = _idc(idc_tree, "303", 0, 1151, 1, name_label=1)
    (idc_tree / "README.txt").write_text("not a patch")
    out = tmp_path / "ds"

    assert _run("ingest", "idc", idc_tree, "--out", out) == cli.EXIT_REJECTED

    def rel(path: Path) -> str:
        return str(path.relative_to(idc_tree))

    reasons = _report(out)
    assert set(reasons) == {rel(truncated), rel(text), rel(grey), rel(dup), rel(mismatch)}
    assert "not a readable PNG/JPEG" in reasons[rel(truncated)]
    assert "not a readable PNG/JPEG" in reasons[rel(text)]
    assert reasons[rel(grey)] == "expected RGB, got mode L"
    assert reasons[rel(dup)] == f"duplicate of {rel(good)}"
    assert reasons[rel(mismatch)] == "folder label 0 differs from file name label 1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"seen": 16, "written": 11, "rejected": 5, "ignored": 1}
    assert len(_rows(out)) == 11


def test_two_patients_need_an_explicit_split_map(tmp_path, capsys):
    root = tmp_path / "idc"
    for p in ("10253", "8975"):
        _idc(root, p, 0, 1, 1)
        _idc(root, p, 1, 51, 1)
    assert _run("ingest", "idc", root, "--out", tmp_path / "a") == 2
    assert "--split-map 10253=train,8975=val" in capsys.readouterr().err
    assert _run("ingest", "idc", root, "--out", tmp_path / "b", "--split-map", "10253=train") == 2
    assert "patients without a split: 8975" in capsys.readouterr().err
    assert _run("ingest", "idc", root, "--out", tmp_path / "c",
                "--split-map", "10253=train,8975=val") == 0
    manifest = json.loads((tmp_path / "c/manifest.json").read_text())
    assert manifest["split_rule"] == {"by": "explicit",
                                      "patients": {"10253": "train", "8975": "val"}}
    assert manifest["splits"]["test"]["rows"] == 0
    assert manifest["splits"]["val"]["patients"] == {"8975": 2}


def test_options_a_source_cannot_use_are_usage_errors(idc_tree, tmp_path, capsys):
    assert _run("ingest", "idc", idc_tree, "--out", tmp_path / "o", "--unlabelled") == 2
    assert "only for `ingest folder`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _run("ingest", "tiles", idc_tree, "--out", tmp_path / "o")
    assert e.value.code == 2


# --------------------------------------------------------------------------- class folders


def _folder(root: Path, rel: str, *, fmt: str = "PNG") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(24, 24)).save(path, format=fmt)
    return path


def test_folder_maps_class_names_and_takes_patients_from_the_folder_above(tmp_path):
    src = tmp_path / "src"
    for p in ("pa", "pb", "pc"):
        _folder(src, f"{p}/Benign/a.png")
        _folder(src, f"{p}/tumour/b.jpg", fmt="JPEG")
    out = tmp_path / "ds"
    assert _run("ingest", "folder", src, "--out", out) == 0
    rows = _rows(out)
    assert {(r["patient_id"], r["label"], r["source"]) for r in rows} == {
        (p, label, f"{p}/{name}") for p in ("pa", "pb", "pc")
        for label, name in ((0, "Benign/a.png"), (1, "tumour/b.jpg"))
    }
    assert {(r["x"], r["y"], r["height"]) for r in rows} == {(-1, -1, 24)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["undersized_patches"] == 0 and manifest["nominal_size"] == [24, 24]
    assert manifest["class_names"] == {"0": "Benign", "1": "tumour"}


def test_folder_names_unmapped_class_folders(tmp_path, capsys):
    src = tmp_path / "src"
    _folder(src, "pa/benign/a.png")
    _folder(src, "pa/stroma/b.png")
    assert _run("ingest", "folder", src, "--out", tmp_path / "o") == 2
    assert "class folders without a label: 'stroma' (1 files)" in capsys.readouterr().err
    assert _run("ingest", "folder", src, "--out", tmp_path / "o",
                "--classes", "benign=0,stroma=1", "--split-map", "pa=train") == 0


def test_flat_class_folders_need_a_patient_regex(tmp_path, capsys):
    src = tmp_path / "src"
    for p in ("p1", "p2", "p3"):
        _folder(src, f"benign/{p}_x10_y20_a.png")
        _folder(src, f"tumour/{p}_x30_y40_b.png")
    assert _run("ingest", "folder", src, "--out", tmp_path / "o") == 2
    assert "patient-level splits need one" in capsys.readouterr().err
    out = tmp_path / "ds"
    assert _run("ingest", "folder", src, "--out", out,
                "--patient-regex", r"^(?P<patient>p\d)_x(?P<x>\d+)_y(?P<y>\d+)") == 0
    rows = _rows(out)
    assert {(r["patient_id"], r["x"], r["y"], r["label"]) for r in rows} == {
        (p, x, y, label) for p in ("p1", "p2", "p3") for x, y, label in ((10, 20, 0), (30, 40, 1))
    }


def test_unlabelled_folder_goes_to_its_own_split_with_null_labels(tmp_path):
    src = tmp_path / "src"
    for rel in ("s1/a.png", "s1/b.png", "s2/c.png", "loose.png"):
        _folder(src, rel)
    out = tmp_path / "ds"
    assert _run("ingest", "folder", src, "--out", out, "--unlabelled") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["unlabelled"]["labels"] == {"null": 4}
    assert manifest["splits"]["unlabelled"]["patients"] == {"s1": 2, "s2": 1, "unknown": 1}
    assert all(manifest["splits"][s]["rows"] == 0 for s in ("train", "val", "test"))
    assert {r["label"] for r in _rows(out)} == {None}


# --------------------------------------------------------------------------- PatchCamelyon


def _pcam(root: Path, split: str, labels: list[int], *, pixels=None) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    x = RNG.integers(0, 256, (len(labels), 96, 96, 3), dtype=np.uint8) if pixels is None else pixels
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=np.asarray(labels, np.uint8).reshape(-1, 1, 1, 1))
    return x


def test_pcam_keeps_official_splits_and_reads_in_chunks(tmp_path):
    src = tmp_path / "pcam"
    x_train = _pcam(src, "train", [0, 1, 1, 0, 1])
    _pcam(src, "valid", [1, 0])
    _pcam(src, "test", [0, 1, 7])
    out = tmp_path / "ds"
    assert _run("ingest", "pcam", src, "--out", out) == cli.EXIT_REJECTED
    assert _report(out) == {
        "camelyonpatch_level_2_split_test_x.h5[2]":
            "label 7 in camelyonpatch_level_2_split_test_y.h5 is not 0 or 1",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_rule"] == {"by": "official"}
    assert {s: v["patients"] for s, v in manifest["splits"].items()} == {
        "train": {"pcam-train": 5}, "val": {"pcam-val": 2}, "test": {"pcam-test": 2}}
    train = [r for r in _rows(out) if r["patient_id"] == "pcam-train"]
    names = [f"camelyonpatch_level_2_split_train_x.h5[{i}]" for i in range(5)]
    assert [r["source"] for r in train] == names
    assert [r["label"] for r in train] == [0, 1, 1, 0, 1]
    assert all(np.array_equal(decode_image(r["image"]), x_train[i]) for i, r in enumerate(train))

    source = PcamSource(src, chunk_rows=2)  # chunk edges inside the file give the same pixels
    cands = [c for c in source.scan().candidates if c.split == "train"]
    assert all(np.array_equal(px, x_train[c.index]) for c, px, _ in source.read_pixels(cands))


def test_pcam_without_its_label_file_is_a_usage_error(tmp_path, capsys):
    src = tmp_path / "pcam"
    _pcam(src, "train", [0, 1])
    (src / "camelyonpatch_level_2_split_train_y.h5").unlink()
    assert _run("ingest", "pcam", src, "--out", tmp_path / "o") == 2
    assert "its y file is missing" in capsys.readouterr().err


# --------------------------------------------------------------------------- idempotent, resumable


def _ingest_idc(src: Path, out: Path, rows_per_file: int) -> None:
    ingest.ingest_source(create_source("idc", src), str(out), rows_per_file=rows_per_file)


def test_rerunning_an_ingest_gives_byte_identical_files(idc_tree, tmp_path):
    _ingest_idc(idc_tree, tmp_path / "a", 2)
    first = _files(tmp_path / "a")
    _ingest_idc(idc_tree, tmp_path / "a", 2)
    _ingest_idc(idc_tree, tmp_path / "b", 2)
    assert _files(tmp_path / "a") == first == _files(tmp_path / "b")
    assert sum(name.endswith(".parquet") for name in first) == 6


def test_a_crashed_ingest_completes_on_rerun_without_duplicates_or_partial_files(
    idc_tree, tmp_path, monkeypatch
):
    _ingest_idc(idc_tree, tmp_path / "clean", 2)
    out = tmp_path / "crashed"
    _ingest_idc(idc_tree, out, 1)  # an older run with other settings: more, smaller files

    real_write, calls = ingest._write_table, []

    def crash_after_first_file(rows, uri):
        calls.append(uri)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        real_write(rows, uri)

    monkeypatch.setattr(ingest, "_write_table", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        _ingest_idc(idc_tree, out, 2)
    assert not (out / "manifest.json").exists()  # readers know the dataset is unfinished
    for part in out.rglob("*.parquet"):  # and every file they could list is whole
        pq.read_table(part, page_checksum_verification=True)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(ingest, "_write_table", real_write)

    _ingest_idc(idc_tree, out, 2)
    assert _files(out) == _files(tmp_path / "clean")  # stale files of the older run are gone
    assert len({r["sha256"] for r in _rows(out)}) == len(_rows(out)) == 10


def test_parallel_ingest_writes_the_same_files_and_report_as_one_process(
    idc_tree, tmp_path, monkeypatch
):
    truncated = _idc(idc_tree, "101", 0, 951, 1)
    truncated.write_bytes(truncated.read_bytes()[:60])
    first = idc_tree / "202/0/202_idx5_x51_y1_class0.png"
    dup = _idc(idc_tree, "303", 1, 1101, 1, pixels=decode_image(first.read_bytes()))
    monkeypatch.setattr(ingest, "INGEST_CHUNK", 3)  # several chunks per worker process
    for workers in (1, 3):
        ingest.ingest_source(create_source("idc", idc_tree), str(tmp_path / f"w{workers}"),
                             rows_per_file=2, workers=workers)
    assert _files(tmp_path / "w1") == _files(tmp_path / "w3")
    reasons = _report(tmp_path / "w3")
    assert "not a readable PNG/JPEG" in reasons[str(truncated.relative_to(idc_tree))]
    assert reasons[str(dup.relative_to(idc_tree))] == "duplicate of 202/0/202_idx5_x51_y1_class0.png"
    assert len(_rows(tmp_path / "w3")) == 10


# --------------------------------------------------------------------------- show / validate


def test_dataset_show_prints_counts_and_writes_a_contact_sheet(idc_tree, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run("ingest", "idc", idc_tree, "--out", out) == 0
    capsys.readouterr()
    assert _run("dataset", "show", out, "--out", tmp_path / "sheet.png") == 0
    text = capsys.readouterr().out
    assert "train" in text and "label 1" in text and "undersized patches: 1" in text
    assert "row counts match the Parquet footers" in text
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width >= 12 * 100
    assert _run("dataset", "show", out) == 0
    assert (out / "contact_sheet.png").is_file()


def test_dataset_show_names_a_patient_found_in_two_splits(idc_tree, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run("ingest", "idc", idc_tree, "--out", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    leaked = next(iter(manifest["splits"]["train"]["patients"]))
    manifest["splits"]["test"]["patients"][leaked] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert _run("dataset", "show", out) == 2
    assert f"patient '{leaked}' is in both 'test' and 'train'" in capsys.readouterr().err


def test_dataset_validate_catches_a_corrupted_page_and_stray_files(idc_tree, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run("ingest", "idc", idc_tree, "--out", out) == 0
    assert _run("dataset", "validate", out) == 0
    part = out / json.loads((out / "manifest.json").read_text())["splits"]["train"]["files"][0]
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the image column's data pages
    part.write_bytes(bytes(data))
    capsys.readouterr()
    assert _run("dataset", "validate", out) == 2
    assert "CRC checksum verification failed" in capsys.readouterr().err

    assert _run("ingest", "idc", idc_tree, "--out", out) == 0
    (out / "train/part-00009.parquet").write_bytes(part.read_bytes())
    capsys.readouterr()
    assert _run("dataset", "show", out) == 2
    assert "part files not in the manifest" in capsys.readouterr().err


# --------------------------------------------------------------------------- raw encoding


def test_raw_encoding_stores_the_same_pixels_uncompressed(idc_tree, tmp_path, capsys):
    png_out, raw_out = tmp_path / "png", tmp_path / "raw"
    assert _run("ingest", "idc", idc_tree, "--out", png_out) == 0
    assert _run("ingest", "idc", idc_tree, "--out", raw_out, "--encoding", "raw") == 0
    png_manifest = json.loads((png_out / "manifest.json").read_text())
    raw_manifest = json.loads((raw_out / "manifest.json").read_text())
    assert (png_manifest["encoding"], raw_manifest["encoding"]) == ("png", "raw")
    # The content hash is over pixels, so both layouts of one source hash the same.
    assert raw_manifest["content_sha256"] == png_manifest["content_sha256"]
    png_rows = {r["sha256"]: r for r in _rows(png_out)}
    raw_rows = _rows(raw_out)
    assert len(raw_rows) == len(png_rows) == 10
    for r in raw_rows:
        assert len(r["image"]) == r["height"] * r["width"] * 3
        pixels = decode_record_image(r["image"], "raw", r["height"], r["width"])
        assert np.array_equal(pixels, decode_image(png_rows[r["sha256"]]["image"]))
        assert pixel_sha256(pixels) == r["sha256"]
    assert {(r["height"], r["width"]) for r in raw_rows} == {(50, 50), (50, 32)}

    assert _run("dataset", "validate", raw_out) == 0
    assert _run("dataset", "show", raw_out) == 0
    with Image.open(raw_out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG"
    assert "encoding: raw" in capsys.readouterr().out


def test_validate_rejects_a_raw_image_of_the_wrong_length(idc_tree, tmp_path, capsys):
    out = tmp_path / "raw"
    assert _run("ingest", "idc", idc_tree, "--out", out, "--encoding", "raw") == 0
    part = out / json.loads((out / "manifest.json").read_text())["splits"]["train"]["files"][0]
    rows = pq.read_table(part).to_pylist()
    rows[0]["image"] = rows[0]["image"][:-3]  # one pixel short: a truncated copy
    pq.write_table(pa.Table.from_pylist(rows, schema=PATCH_SCHEMA), part,
                   write_page_checksum=True)
    capsys.readouterr()
    assert _run("dataset", "validate", out) == 2
    err = capsys.readouterr().err
    assert "raw images of the wrong length" in err and rows[0]["source"] in err
    expected = rows[0]["height"] * rows[0]["width"] * 3
    assert f"{len(rows[0]['image'])} bytes, expected {expected}" in err


def test_an_unknown_encoding_is_refused_before_anything_is_written(idc_tree, tmp_path):
    with pytest.raises(DataError, match=r"unknown patch encoding 'jpeg'; expected one of"):
        ingest.ingest_source(create_source("idc", idc_tree), str(tmp_path / "x"),
                             encoding="jpeg")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match=r"patch-7: 10 raw bytes, expected 2x2x3 = 12"):
        decode_record_image(b"0123456789", "raw", 2, 2, source="patch-7")
