"""connectomix.ingest: every input format, normalization, bad input, ROI, CLI, OME-Zarr readback, real data."""

from __future__ import annotations

import gzip
import json
import re
import struct
import time
import tracemalloc
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from connectomix import io
from connectomix.cli import main
from connectomix.ingest import PERCENTILES, N5Array, ingest, natural_key, probe

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VOXEL = (50.0, 4.0, 4.0)


def _volume(shape=(6, 32, 40), dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is None:
        return rng.normal(0.3, 0.1, shape).astype(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _raw(root) -> np.ndarray:
    return io.open_array(root, "raw")[...]


def _write_sequence(folder: Path, data: np.ndarray, ext: str, names=None, **tiff_options) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{z:02d}{ext}" for z in range(len(data))]
    paths = []
    for name, section in zip(names, data):
        path = folder / name
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(path, section, **tiff_options)
        else:
            iio.imwrite(path, section)
        paths.append(path)
    return paths


def _write_n5(root: Path, key: str, data: np.ndarray, block, compression="gzip", skip=()) -> None:
    """An N5 dataset written from the spec (big-endian, x-fastest, block files <ix>/<iy>/<iz>)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    ds = root / key
    ds.mkdir(parents=True)
    (ds / "attributes.json").write_text(json.dumps({
        "dimensions": list(data.shape[::-1]), "blockSize": list(block[::-1]), "dataType": str(data.dtype),
        "compression": {"type": compression}}))
    grid = [range(-(-s // b)) for s, b in zip(data.shape, block)]
    for bz in grid[0]:
        for by in grid[1]:
            for bx in grid[2]:
                if (bz, by, bx) in skip:
                    continue
                chunk = data[bz * block[0]:(bz + 1) * block[0], by * block[1]:(by + 1) * block[1],
                             bx * block[2]:(bx + 1) * block[2]]
                body = chunk.astype(chunk.dtype.newbyteorder(">")).tobytes(order="C")
                if compression == "gzip":
                    body = gzip.compress(body)
                header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *chunk.shape[::-1])
                path = ds / str(bx) / str(by) / str(bz)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(header + body)


# --- formats ---------------------------------------------------------------------------------------------------


def test_natural_sort_key():
    names = ["s10.png", "s2.png", "s1.png", "S3.png", "s21.png"]
    assert sorted(names, key=natural_key) == ["s1.png", "s2.png", "S3.png", "s10.png", "s21.png"]


@pytest.mark.parametrize("ext", [".tif", ".png"])
def test_sequence_lossless_natural_order(tmp_path, ext):
    data = _volume((12, 24, 20))
    # unpadded names: lexical order would put 10, 11 before 2
    _write_sequence(tmp_path / "src", data, ext, names=[f"sec{z}{ext}" for z in range(12)])
    (tmp_path / "src" / "notes.txt").write_text("not an image")
    info = probe({"path": str(tmp_path / "src")})
    assert info.shape == (12, 24, 20) and info.n_sections == 12 and info.dtype == np.uint8
    assert info.format == {".tif": "tiff", ".png": "png"}[ext]
    summary = ingest({"path": str(tmp_path / "src")}, tmp_path / "v.zarr", VOXEL, chunk_shape=(4, 16, 16))
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)
    assert summary["ignored_files"] == [str(tmp_path / "src" / "notes.txt")]
    assert summary["normalization"]["method"] == "identity"


def test_jpeg_sequence(tmp_path):
    # JPEG is lossy: smooth sections with distinct brightness; check order and closeness.
    yy, xx = np.mgrid[:32, :32]
    data = np.stack([(40 + 15 * z + 20 * np.sin(yy / 6.0) + 10 * np.cos(xx / 5.0)).astype(np.uint8)
                     for z in range(10)])
    _write_sequence(tmp_path / "src", data, ".jpg", names=[f"{z}.jpg" for z in range(10)])
    assert probe({"path": str(tmp_path / "src")}).format == "jpeg"
    ingest({"path": str(tmp_path / "src"), "format": "jpeg"}, tmp_path / "v.zarr", VOXEL)
    out = _raw(tmp_path / "v.zarr").astype(int)
    assert out.shape == data.shape
    assert np.abs(out - data).mean() < 3
    assert np.all(np.diff(out.mean(axis=(1, 2))) > 10)  # natural order kept: 0..9, not 0, 1, ... wrapped


def test_planar_colour_tiff_is_not_a_stack(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", _volume((3, 16, 16)), photometric="rgb", planarconfig="separate")
    with pytest.raises(ValueError, match=r"rgb\.tif: .*colour image"):
        probe({"path": str(tmp_path / "rgb.tif")})


def test_multipage_tiff_streams_pages(tmp_path):
    data = _volume((6, 32, 40))
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    info = probe({"path": str(tmp_path / "stack.tif")})
    assert (info.shape, info.format, info.n_sections) == ((6, 32, 40), "tiff", 6)
    ingest({"path": str(tmp_path / "stack.tif")}, tmp_path / "v.zarr", VOXEL, chunk_shape=(4, 16, 16))
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)


@pytest.mark.parametrize("metadata", [{}, None], ids=["tifffile-shaped", "plain-pages"])
@pytest.mark.parametrize("where", ["page header", "pixel data"])
def test_truncated_multipage_tiff_is_refused(tmp_path, metadata, where):
    """A stack cut short (a copy that stopped) must not be read as fewer sections: the error names the file and
    the last page that can be read."""
    data = _volume((10, 32, 40))
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, data, photometric="minisblack", metadata=metadata)
    with tifffile.TiffFile(whole) as tif:
        page = tif.pages[6]
        cut = page.offset + 2 if where == "page header" else page.dataoffsets[0] + 10
    cut_file = tmp_path / "cut.tif"
    cut_file.write_bytes(whole.read_bytes()[:cut])
    # tifffile may store every page's header after all pixel data: then a cut in page 6's data loses pages 1-9
    last = "5" if where == "page header" else "[0-5]"
    with pytest.raises(ValueError, match=rf"cut\.tif: corrupt or truncated TIFF .*last readable page is {last}\b"):
        probe({"path": str(cut_file)})
    assert probe({"path": str(whole)}).shape == (10, 32, 40)


def test_hdf5_nested_key(tmp_path):
    data = _volume((9, 30, 20))
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("volumes/raw", data=data, chunks=(3, 10, 10), compression="gzip")
    source = {"path": str(tmp_path / "em.h5"), "key": "volumes/raw"}
    assert probe(source).shape == (9, 30, 20)
    ingest(source, tmp_path / "v.zarr", VOXEL, chunk_shape=(4, 16, 16))
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_and_array_paths(tmp_path, zarr_format):
    data = _volume((7, 20, 30))
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("em/raw", shape=data.shape, chunks=(2, 8, 8), dtype=data.dtype)[...] = data
    info = probe({"path": str(tmp_path / "in.zarr"), "key": "em/raw"})
    assert (info.shape, info.format) == ((7, 20, 30), "zarr")
    ingest({"path": str(tmp_path / "in.zarr"), "key": "em/raw"}, tmp_path / "a.zarr", VOXEL)
    np.testing.assert_array_equal(_raw(tmp_path / "a.zarr"), data)
    # the array folder itself, no key
    ingest({"path": str(tmp_path / "in.zarr" / "em" / "raw"), "format": "zarr"}, tmp_path / "b.zarr", VOXEL)
    np.testing.assert_array_equal(_raw(tmp_path / "b.zarr"), data)


@pytest.mark.parametrize("compression", ["gzip", "raw"])
def test_n5_blocks_edges_and_missing_block(tmp_path, compression):
    data = _volume((7, 13, 22), dtype=np.uint16)
    # block (3, 5, 8): partial edge blocks on every axis; one block absent reads as 0
    _write_n5(tmp_path / "in.n5", "volumes/raw", data, (3, 5, 8), compression, skip={(1, 1, 2)})
    expected = data.copy()
    expected[3:6, 5:10, 16:22] = 0
    array = N5Array.open(tmp_path / "in.n5", "volumes/raw")
    assert array.shape == data.shape and array.dtype == np.uint16
    np.testing.assert_array_equal(array[0:7, 0:13, 0:22], expected)
    np.testing.assert_array_equal(array[2:5, 4:11, 7:19], expected[2:5, 4:11, 7:19])
    source = {"path": str(tmp_path / "in.n5"), "key": "volumes/raw", "normalize": "minmax"}
    info = probe(source)
    assert (info.shape, info.format, info.dtype) == ((7, 13, 22), "n5", np.uint16)
    summary = ingest(source, tmp_path / "v.zarr", VOXEL)
    lo, hi = expected.min(), expected.max()  # small volume: the sample is every voxel
    assert (summary["normalization"]["lo"], summary["normalization"]["hi"]) == (lo, hi)
    want = np.clip(np.rint((expected.astype(np.float32) - lo) * np.float32(255 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), want.astype(np.uint8))


def test_n5_group_without_key_names_datasets(tmp_path):
    _write_n5(tmp_path / "in.n5", "raw", _volume((4, 8, 8)), (2, 4, 4))
    with pytest.raises(ValueError, match=r"in\.n5.*N5 group.*source\.key.*raw"):
        probe({"path": str(tmp_path / "in.n5")})


def test_roi_crops_and_translates(tmp_path):
    data = _volume((10, 40, 50))
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["stack"] = data
    summary = ingest({"path": str(tmp_path / "em.h5"), "key": "stack"}, tmp_path / "v.zarr", VOXEL,
                     offset_nm=(100, 0, 0), roi={"offset": (2, 5, 7), "shape": (6, 20, 30)})
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data[2:8, 5:25, 7:37])
    meta = io.read_meta(tmp_path / "v.zarr", "raw")
    assert meta.offset_nm == (100 + 2 * 50, 5 * 4, 7 * 4)
    assert summary["roi"] == {"offset": [2, 5, 7], "shape": [6, 20, 30]}
    with pytest.raises(ValueError, match="exceeds the source shape"):
        ingest({"path": str(tmp_path / "em.h5"), "key": "stack"}, tmp_path / "w.zarr", VOXEL,
               roi={"offset": (5, 0, 0), "shape": (6, 40, 50)})
    assert not (tmp_path / "w.zarr").exists()


# --- normalization -------------------------------------------------------------------------------------------


def test_uint16_percentile_from_strided_sample_not_one_section(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(1000, 3000, (40, 64, 64), dtype=np.uint16)
    data[0] = rng.integers(1000, 1100, (64, 64))  # a dim first section: one-section stats would be wrong
    data[20:, 10, 10] = 65535  # hot pixels: the percentiles ignore them
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    summary = ingest({"path": str(tmp_path / "stack.tif")}, tmp_path / "v.zarr", VOXEL, chunk_shape=(8, 32, 32))
    norm = summary["normalization"]
    assert norm["method"] == "percentile" and norm["dtype_in"] == "uint16"
    assert len(norm["sample"]["sections"]) == 16
    assert norm["sample"]["sections"][0] == 0 and norm["sample"]["sections"][-1] == 39
    sample = data[norm["sample"]["sections"]].ravel()
    np.testing.assert_allclose([norm["lo"], norm["hi"]], np.percentile(sample, PERCENTILES))
    assert 1000 <= norm["lo"] < 1010 and 2990 < norm["hi"] < 3000
    out = _raw(tmp_path / "v.zarr")
    x = data.astype(np.float32)
    want = np.clip(np.rint((x - np.float32(norm["lo"])) * np.float32(255 / (norm["hi"] - norm["lo"]))), 0, 255)
    np.testing.assert_array_equal(out, want.astype(np.uint8))
    assert out[20:, 10, 10].min() == 255  # saturated, counted as clipped
    assert summary["clipped"] >= 20 and summary["out_max"] == 255
    # the mapping is recorded with the array
    assert io.read_meta(tmp_path / "v.zarr", "raw").attrs["ingest"]["normalization"]["lo"] == norm["lo"]


def test_uint16_png_sequence_percentile(tmp_path):
    data = np.random.default_rng(4).integers(200, 4000, (5, 16, 24)).astype(np.uint16)
    _write_sequence(tmp_path / "src", data, ".png")
    assert probe({"path": str(tmp_path / "src")}).dtype == np.uint16
    norm = ingest({"path": str(tmp_path / "src")}, tmp_path / "v.zarr", VOXEL)["normalization"]
    np.testing.assert_allclose([norm["lo"], norm["hi"]], np.percentile(data, PERCENTILES))  # all 5 sampled
    x = data.astype(np.float32)
    want = np.clip(np.rint((x - np.float32(norm["lo"])) * np.float32(255 / (norm["hi"] - norm["lo"]))), 0, 255)
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), want.astype(np.uint8))


def test_float_minmax_and_large_image_sample_stride(tmp_path):
    data = np.random.default_rng(2).normal(0.5, 0.2, (4, 600, 600)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = data
    summary = ingest({"path": str(tmp_path / "f.h5"), "key": "x", "normalize": "minmax"},
                     tmp_path / "v.zarr", VOXEL, pyramid_levels=1)
    norm = summary["normalization"]
    assert norm["sample"]["stride_yx"] == 2  # 360000 pixels > 262144: every second row and column
    sample = data[:, ::2, ::2]
    assert (norm["lo"], norm["hi"]) == (float(sample.min()), float(sample.max()))
    out = _raw(tmp_path / "v.zarr")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    # monotone mapping: brighter input never gives darker output
    order = np.argsort(data[0, 0])
    assert np.all(np.diff(out[0, 0][order].astype(int)) >= 0)


def test_normalize_none(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (4, 16, 16)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ok.tif", data, photometric="minisblack")
    summary = ingest({"path": str(tmp_path / "ok.tif"), "normalize": "none"}, tmp_path / "v.zarr", VOXEL)
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)
    assert summary["normalization"]["method"] == "none"
    data[3, 0, 0] = 300
    tifffile.imwrite(tmp_path / "bad.tif", data, photometric="minisblack")
    with pytest.raises(ValueError, match=r"bad\.tif.*normalize 'none' needs integer values in 0\.\.255"):
        ingest({"path": str(tmp_path / "bad.tif"), "normalize": "none"}, tmp_path / "v.zarr", VOXEL)
    assert not io.has_array(tmp_path / "v.zarr", "raw")


def test_grey_saved_as_rgb_is_accepted(tmp_path):
    data = _volume((3, 16, 16))
    _write_sequence(tmp_path / "src", np.repeat(data[..., None], 3, axis=-1), ".png")
    ingest({"path": str(tmp_path / "src")}, tmp_path / "v.zarr", VOXEL)
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)


# --- bad input: error names file and problem, CLI exit 1, no raw left ----------------------------------------


def _cli(source: dict, volume: Path, summary: Path, *extra) -> int:
    return main(["ingest", "--source", json.dumps(source), "--volume", str(volume), "--voxel-size", "50", "4",
                 "4", "--chunk-shape", "2", "16", "16", "--summary", str(summary), *extra])


def _case_corrupt(tmp):
    _write_sequence(tmp / "src", _volume((4, 16, 16)), ".png")
    (tmp / "src" / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return {"path": str(tmp / "src")}, "02.png", "corrupt"


def _case_truncated_tiff(tmp):
    # the header survives, the pixel data does not: found mid-write, after earlier slabs were written
    _write_sequence(tmp / "src", _volume((8, 32, 32)), ".tif")
    bad = tmp / "src" / "05.tif"
    bad.write_bytes(bad.read_bytes()[:600])
    return {"path": str(tmp / "src")}, "05.tif", "corrupt or truncated"


def _case_corrupt_tiff_data(tmp):
    # intact headers, garbage in one section's compressed pixels: found only when that section is decoded
    _write_sequence(tmp / "src", _volume((8, 32, 32)), ".tif", compression="zlib")
    bad = tmp / "src" / "05.tif"
    with tifffile.TiffFile(bad) as tif:
        start = tif.pages[0].dataoffsets[0]
    raw = bytearray(bad.read_bytes())
    raw[start:start + 16] = b"\xff" * 16
    bad.write_bytes(bytes(raw))
    return {"path": str(tmp / "src")}, "05.tif", "corrupt or truncated"


def _case_constant(tmp):
    with h5py.File(tmp / "blank.h5", "w") as f:
        f.create_dataset("stack", data=np.full((8, 32, 32), 117, np.uint8))
    return {"path": str(tmp / "blank.h5"), "key": "stack"}, "blank.h5", "constant volume"


def _case_truncated_png(tmp):
    _write_sequence(tmp / "src", _volume((4, 32, 32)), ".png")
    bad = tmp / "src" / "01.png"
    bad.write_bytes(bad.read_bytes()[:400])
    return {"path": str(tmp / "src")}, "01.png", "truncated"


def _case_mixed_shapes(tmp):
    _write_sequence(tmp / "src", _volume((4, 16, 16)), ".tif")
    tifffile.imwrite(tmp / "src" / "03.tif", _volume((1, 16, 17))[0])
    return {"path": str(tmp / "src")}, "03.tif", "mixed section shapes"


def _case_missing_key(tmp):
    with h5py.File(tmp / "em.h5", "w") as f:
        f["stack"] = _volume((4, 8, 8))
    return {"path": str(tmp / "em.h5"), "key": "raw"}, "em.h5", "no dataset 'raw'.*stack"


def _case_no_key(tmp):
    with h5py.File(tmp / "em.h5", "w") as f:
        f["stack"] = _volume((4, 8, 8))
    return {"path": str(tmp / "em.h5")}, "em.h5", "needs source.key.*stack"


def _case_empty_folder(tmp):
    (tmp / "src").mkdir()
    return {"path": str(tmp / "src")}, "src", "no TIFF/PNG/JPEG images"


def _case_missing_path(tmp):
    return {"path": str(tmp / "nowhere")}, "nowhere", "does not exist"


def _case_nan_sampled(tmp):
    data = _volume((6, 8, 8), np.float32)
    data[0, 2, 3] = np.nan
    with h5py.File(tmp / "f.h5", "w") as f:
        f["x"] = data
    return {"path": str(tmp / "f.h5"), "key": "x"}, r"f\.h5:x \(section 0\)", "NaN"


def _case_nan_unsampled(tmp):
    # 40 sections, 16 sampled: section 1 is not in the sample, so the NaN shows up during the write pass
    data = _volume((40, 8, 8), np.float32)
    data[1, 0, 0] = np.nan
    tifffile.imwrite(tmp / "f.tif", data, photometric="minisblack")
    return {"path": str(tmp / "f.tif")}, r"f\.tif \(page 1\)", "NaN"


def _case_one_section_png(tmp):
    _write_sequence(tmp / "src", _volume((1, 8, 8)), ".png")
    return {"path": str(tmp / "src")}, "src", "one section only"


def _case_one_section_hdf5(tmp):
    with h5py.File(tmp / "em.h5", "w") as f:
        f["stack"] = _volume((1, 8, 8))[0]
    return {"path": str(tmp / "em.h5"), "key": "stack"}, "em.h5", "one section only"


def _case_unknown_format(tmp):
    (tmp / "volume.xyz").write_bytes(b"\x00\x01" * 100)
    return {"path": str(tmp / "volume.xyz")}, "volume.xyz", "unknown source format"


def _case_rgb(tmp):
    data = np.repeat(_volume((3, 8, 8))[..., None], 3, axis=-1)
    data[2, 0, 0] = (255, 0, 0)
    _write_sequence(tmp / "src", data, ".png")
    return {"path": str(tmp / "src")}, "02.png", "colour"


def _case_mixed_formats(tmp):
    _write_sequence(tmp / "src", _volume((2, 8, 8)), ".png")
    _write_sequence(tmp / "src", _volume((2, 8, 8)), ".tif", names=["a.tif", "b.tif"])
    return {"path": str(tmp / "src")}, "src", "mixed image formats"


BAD = [_case_corrupt, _case_truncated_tiff, _case_corrupt_tiff_data, _case_constant, _case_truncated_png, _case_mixed_shapes, _case_missing_key,
       _case_no_key, _case_empty_folder, _case_missing_path, _case_nan_sampled, _case_nan_unsampled,
       _case_one_section_png, _case_one_section_hdf5, _case_unknown_format, _case_rgb, _case_mixed_formats]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.__name__[6:])
def test_bad_input(tmp_path, case, capsys):
    source, file_pattern, problem = case(tmp_path)
    volume = tmp_path / "out" / "volume.zarr"
    with pytest.raises((ValueError, FileNotFoundError), match=f"{file_pattern}.*{problem}"):
        ingest(source, volume, VOXEL, chunk_shape=(2, 16, 16))
    assert not (tmp_path / "out").exists()  # nothing written, not even the folders
    # the CLI: one line naming file and problem, exit 1, no summary, no raw (an old one is removed too)
    io.write_full(volume, "raw", np.zeros((2, 4, 4), np.uint8), (2, 4, 4), VOXEL)
    summary = tmp_path / "out" / "ingest.json"
    summary.write_text("{}")  # stale, from an earlier run
    capsys.readouterr()
    assert _cli(source, volume, summary) == 1
    err = capsys.readouterr().err
    assert err.startswith("connectomix ingest: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(f"{file_pattern}.*{problem}", err), err
    assert not io.has_array(volume, "raw") and not (volume / "raw").exists()
    assert not summary.exists()


@pytest.mark.parametrize("case", [_case_corrupt_tiff_data, _case_nan_unsampled], ids=["corrupt_tiff_data", "nan"])
def test_failure_mid_write_removes_partial_raw(tmp_path, case, monkeypatch):
    source, file_pattern, problem = case(tmp_path)
    writes = []
    create = io.create_array

    class Spy:  # counts slab writes into the new raw array
        def __init__(self, array):
            self.array = array

        def __setitem__(self, key, value):
            writes.append(key)
            self.array[key] = value

        def __getattr__(self, name):
            return getattr(self.array, name)

    monkeypatch.setattr(io, "create_array", lambda *a, **k: Spy(create(*a, **k)))
    volume = tmp_path / "volume.zarr"
    with pytest.raises(ValueError, match=f"{file_pattern}.*{problem}"):
        ingest(source, volume, VOXEL, chunk_shape=(1, 16, 16))
    assert len(writes) >= 1  # sections before the bad one were written ...
    assert not volume.exists()  # ... and removed with everything else this call created


def test_bad_source_mapping():
    with pytest.raises(ValueError, match="unknown keys"):
        probe({"path": "x", "colour": "yes"})
    with pytest.raises(ValueError, match="unknown source format 'bmp'"):
        probe({"path": "x", "format": "bmp"})
    assert main(["ingest", "--source", "{not json", "--volume", "v.zarr", "--voxel-size", "1", "1", "1"]) == 1


# --- CLI, readback with ome-zarr-py, memory --------------------------------------------------------------------


def test_cli_summary_and_ome_zarr_readback(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = _volume((10, 64, 48), np.uint16)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["stack"] = data
    volume, summary_path = tmp_path / "res" / "volume.zarr", tmp_path / "res" / "ingest.json"
    rc = _cli({"path": str(tmp_path / "em.h5"), "key": "stack"}, volume, summary_path,
              "--roi-offset", "1", "0", "0", "--roi-shape", "8", "64", "48", "--pyramid-levels", "3",
              "--pyramid-factor", "1", "2", "2", "--offset-nm", "0", "10", "20")
    assert rc == 0
    summary = json.loads(summary_path.read_text())
    assert summary["shape"] == [8, 64, 48] and summary["source_shape"] == [10, 64, 48]
    assert (summary["dtype_in"], summary["dtype_out"]) == ("uint16", "uint8")
    assert summary["normalization"]["method"] == "percentile" and summary["pyramid_levels"] == 3
    assert {"probe_s", "sample_s", "write_s", "pyramid_s", "total_s"} <= set(summary["timings"])

    nodes = list(Reader(parse_url(str(volume / "raw")))())
    image = nodes[0]
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and all(a["unit"] == "nanometer" for a in axes)
    transforms = image.metadata["coordinateTransformations"]
    assert len(image.data) == 3 and len(transforms) == 3
    for level, (arr, tr) in enumerate(zip(image.data, transforms)):
        scale = next(t["scale"] for t in tr if t["type"] == "scale")
        assert scale == pytest.approx([50, 4 * 2**level, 4 * 2**level])
        assert arr.shape == (8, 64 // 2**level, 48 // 2**level)
    translation = next(t["translation"] for t in transforms[0] if t["type"] == "translation")
    assert translation == pytest.approx([50, 10, 20])  # offset_nm + roi offset (1 section of 50 nm)
    np.testing.assert_array_equal(np.asarray(image.data[0]), _raw(volume))

    prov = io.read_meta(volume, "raw").attrs["provenance"]
    assert prov["inputs"][str(tmp_path / "em.h5")]["sha256"]
    assert prov["config"]["source"]["key"] == "stack"


def test_container_reads_never_exceed_one_slab(tmp_path, monkeypatch):
    data = _volume((20, 32, 32))
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("stack", data=data, chunks=(4, 32, 32))
    requests = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        requests.append(out.shape[0] if out.ndim == 3 else 1)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    ingest({"path": str(tmp_path / "em.h5"), "key": "stack"}, tmp_path / "v.zarr", VOXEL,
           chunk_shape=(4, 16, 16), pyramid_levels=1)
    assert requests and max(requests) <= 4 and sum(requests) == 20  # 5 slabs of 4 sections, each read once
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), data)


def _peak_ingest_bytes(tmp_path, n_sections) -> int:
    data = _volume((n_sections, 256, 256), np.uint16)
    path = tmp_path / f"stack{n_sections}.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    del data
    tracemalloc.start()
    try:
        ingest({"path": str(path)}, tmp_path / f"v{n_sections}.zarr", VOXEL, chunk_shape=(4, 64, 64),
               pyramid_levels=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_multipage_tiff_peak_memory_does_not_grow_with_the_volume(tmp_path):
    # uint16 input needs the sampling pass and the float conversion: the heaviest path
    _peak_ingest_bytes(tmp_path, 4)  # warm-up: first-use imports and caches are not the reader's memory
    small = _peak_ingest_bytes(tmp_path, 16)
    large = _peak_ingest_bytes(tmp_path, 128)  # 16 MiB in, 8 MiB out
    assert large < 1.1 * small + (1 << 19), (small, large)
    assert large < 128 * 256 * 256, f"peak {large / 2**20:.1f} MiB is not below the uint8 volume (8 MiB)"


# --- real data -------------------------------------------------------------------------------------------------

realdata = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real EM data folder {SHARED} is absent")


@pytest.mark.realdata
@realdata
def test_real_gala_fibsem_hdf5(tmp_path):
    path = SHARED / "gala-fibsem" / "train-image.h5"
    with h5py.File(path, "r") as f:
        expected = f["stack"][...]
    source = {"path": str(path), "key": "stack"}
    assert probe(source).shape == (50, 100, 200)
    summary = ingest(source, tmp_path / "v.zarr", (10, 10, 10), chunk_shape=(8, 64, 64))
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), expected)
    assert summary["normalization"]["method"] == "identity" and summary["pyramid_levels"] == 3


@pytest.mark.realdata
@realdata
def test_real_isbi2012_png(tmp_path):
    folder = SHARED / "isbi2012" / "image"
    info = probe({"path": str(folder)})
    assert (info.shape, info.format) == ((30, 512, 512), "png")
    roi = {"offset": (5, 128, 64), "shape": (20, 256, 256)}
    ingest({"path": str(folder)}, tmp_path / "v.zarr", (50, 4, 4), roi=roi)
    expected = np.stack([iio.imread(folder / f"{z:02d}.png") for z in range(5, 25)])[:, 128:384, 64:320]
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), expected)


@pytest.mark.realdata
@realdata
def test_real_vnc_sstem_tiff_cropped(tmp_path):
    folder = SHARED / "vnc-sstem" / "raw"
    assert probe({"path": str(folder)}).shape == (12, 1024, 1024)
    roi = {"offset": (0, 400, 300), "shape": (12, 256, 256)}
    summary = ingest({"path": str(folder)}, tmp_path / "v.zarr", (50, 4.6, 4.6), roi=roi)
    expected = np.stack([tifffile.imread(folder / f"{z:02d}.tif")[400:656, 300:556] for z in range(12)])
    np.testing.assert_array_equal(_raw(tmp_path / "v.zarr"), expected)
    assert len(summary["source"]) and io.read_meta(tmp_path / "v.zarr", "raw").offset_nm == pytest.approx(
        (0, 400 * 4.6, 300 * 4.6))


@pytest.mark.parametrize("name", ["gala-fibsem", "isbi2012", "vnc-sstem"])
def test_example_configs_validate(name, monkeypatch):
    import yaml

    from connectomix.config import validate

    config = validate(yaml.safe_load((REPO / "config" / "examples" / f"{name}.yaml").read_text()), name)
    ground_truth = config["segment"]["evaluation"]["ground_truth"]
    assert set(ground_truth) <= set(config["datasets"])
    for dataset in config["datasets"].values():
        assert dataset["source"]["path"].startswith("../shared/data/")
        if SHARED.is_dir():  # the paths are relative to the repo root, where Snakemake runs
            monkeypatch.chdir(REPO)
            info = probe(dataset["source"])
            assert info.n_sections >= 12
    cleft_truth = config["synapses"]["evaluation"]["ground_truth"]
    assert set(cleft_truth) <= set(config["datasets"])
    if SHARED.is_dir():
        assert all((REPO / gt["path"]).exists() for gt in ground_truth.values()), ground_truth
        assert all((REPO / gt["path"]).exists() for gt in cleft_truth.values()), cleft_truth


def test_vnc_example_ground_truth_loads_as_declared(shared_data):
    """The vnc-sstem example's masks, read with the formats its config declares: 2D instances between membranes
    and sparse cleft masks, one per raw section, of the raw sections' shape."""
    import yaml

    from connectomix.config import validate
    from connectomix.evaluate.segmentation import load_ground_truth

    config = validate(yaml.safe_load((REPO / "config" / "examples" / "vnc-sstem.yaml").read_text()), "vnc")
    labels_gt = config["segment"]["evaluation"]["ground_truth"]["vnc-train"]
    cleft_gt = config["synapses"]["evaluation"]["ground_truth"]["vnc-train"]
    labels = load_ground_truth(gt_file=REPO / labels_gt["path"], gt_format=labels_gt["format"])
    clefts = load_ground_truth(gt_file=REPO / cleft_gt["path"], gt_format=cleft_gt["format"])
    assert labels.shape == clefts.shape == (12, 1024, 1024)
    assert tifffile.imread(shared_data / "vnc-sstem" / "raw" / "00.tif").shape == labels.shape[1:]
    assert all(len(np.unique(section)) > 50 for section in labels)  # cells per section, 0 = membrane
    assert 0.1 < (labels == 0).mean() < 0.3 and 0.001 < clefts.mean() < 0.01


def test_growing_the_roi_extends_raw_in_place_with_the_first_normalization(tmp_path):
    """A larger ROI (same source and offset) grows `raw` in place: the old voxels keep their values (the first
    ingest's normalization is kept, though the new region has another intensity range), the new ones are read
    from the source; a smaller ROI is refused and leaves `raw` as it was."""
    rng = np.random.default_rng(5)
    data = rng.normal(1000.0, 50.0, (6, 32, 48)).astype(np.float32)
    data[:, :, 32:] += 400.0  # the region added later is brighter
    source = {"path": str(tmp_path / "in.zarr"), "format": "zarr", "normalize": "minmax"}
    zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=(2, 16, 16), dtype="float32",
                      zarr_format=2)[...] = data
    root = tmp_path / "v.zarr"
    first = ingest(source, root, VOXEL, chunk_shape=(2, 16, 16), roi={"offset": (0, 4, 0), "shape": (6, 16, 32)},
                   pyramid_levels=1)
    before = _raw(root)
    grown = ingest(source, root, VOXEL, chunk_shape=(2, 16, 16), roi={"offset": (0, 4, 0), "shape": (6, 24, 48)},
                   pyramid_levels=1)
    after = _raw(root)
    assert after.shape == (6, 24, 48) and grown["extended_from"] == [6, 16, 32]
    np.testing.assert_array_equal(after[:, :16, :32], before)
    assert grown["normalization"]["lo"] == first["normalization"]["lo"]
    lo, hi = first["normalization"]["lo"], first["normalization"]["hi"]
    expected = np.clip(np.rint((data[:, 4:28, :48] - lo) * np.float32(255.0 / (hi - lo))), 0, 255)
    np.testing.assert_array_equal(after, expected.astype(np.uint8))
    with pytest.raises(ValueError, match="can only grow"):
        ingest(source, root, VOXEL, chunk_shape=(2, 16, 16), roi={"offset": (0, 4, 0), "shape": (6, 24, 40)},
               pyramid_levels=1)
    np.testing.assert_array_equal(_raw(root), after)


# --- a changed source is never trusted: identity, fresh re-ingest, block digests ------------------------------------


def _fresh(source, tmp_path, name, **kwargs):
    summary = ingest(source, tmp_path / name / "volume.zarr", VOXEL, chunk_shape=(2, 16, 16), pyramid_levels=1,
                     **kwargs)
    return summary, _raw(tmp_path / name / "volume.zarr")


@pytest.mark.parametrize("ext", [".h5", ".tif"])
def test_a_replaced_source_is_ingested_afresh(tmp_path, ext):
    """Replace the source with other data of the same shape: its identity changes, and ingesting it again into the
    same volume gives exactly what a fresh ingest of the new data gives (normalization included), not the old
    normalization applied to new data."""
    from connectomix.ingest import source_identity

    old = _volume((6, 32, 40), np.uint16, seed=1)
    new = (_volume((6, 32, 40), np.uint16, seed=2) // 3).astype(np.uint16)  # another grey-value range
    if ext == ".h5":
        def write(data):
            with h5py.File(tmp_path / "em.h5", "w") as f:
                f.create_dataset("stack", data=data)
        source = {"path": str(tmp_path / "em.h5"), "key": "stack"}
    else:
        def write(data):
            _write_sequence(tmp_path / "src", data, ".tif")
        source = {"path": str(tmp_path / "src")}
    write(old)
    identity = source_identity(source)
    assert source_identity(source) == identity  # stat only: stable while nothing changes
    first, _ = _fresh(source, tmp_path, "run")
    time.sleep(0.01)
    write(new)
    assert source_identity(source) != identity
    again, raw = _fresh(source, tmp_path, "run")
    fresh, expected = _fresh(source, tmp_path, "fresh")
    np.testing.assert_array_equal(raw, expected)
    assert again["normalization"] == fresh["normalization"] != first["normalization"]


def test_block_digests_change_only_where_the_voxels_did(tmp_path):
    data = _volume((8, 32, 48), seed=3)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("stack", data=data)
    source = {"path": str(tmp_path / "em.h5"), "key": "stack", "normalize": "none"}
    before, _ = _fresh(source, tmp_path, "a", digest_block_shape=(4, 16, 16))
    digests = before["block_digests"]["digests"]
    assert sorted(digests) == [f"z{z}_y{y}_x{x}" for z in range(2) for y in range(2) for x in range(3)]
    assert len(set(digests.values())) == len(digests)
    data[5, 20, 40] ^= 0xFF  # one voxel of block z1_y1_x2
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("stack", data=data)
    after, _ = _fresh(source, tmp_path, "b", digest_block_shape=(4, 16, 16))
    changed = {b for b, d in after["block_digests"]["digests"].items() if digests[b] != d}
    assert changed == {"z1_y1_x2"}
    with pytest.raises(ValueError, match="multiple of the chunk"):
        _fresh(source, tmp_path, "c", digest_block_shape=(3, 16, 16))
