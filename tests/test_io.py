import numpy as np
import pytest

from connectomix import io


def _labels(shape=(6, 40, 36), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 5, size=shape).astype(np.uint64)


def test_image_pyramid_is_mean_and_metadata_is_ngff(tmp_path):
    root = tmp_path / "volume.zarr"
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(6, 40, 36), dtype=np.uint8)
    io.write_full(root, "raw", raw, (2, 16, 16), voxel_size=(40, 8, 8), offset_nm=(80, 0, 16))
    assert io.build_pyramid(root, "raw", levels=3) == 3
    level1 = io.open_array(root, "raw", 1)[...]
    expected = raw.reshape(6, 20, 2, 18, 2).mean(axis=(2, 4))
    assert level1.shape == (6, 20, 18)
    assert np.abs(level1.astype(float) - expected).max() <= 0.5
    meta = io.read_meta(root, "raw")
    assert meta.levels == 3 and meta.voxel_size == (40, 8, 8) and meta.offset_nm == (80, 0, 16)
    assert not meta.is_label


def test_label_pyramid_takes_the_mode(tmp_path):
    root = tmp_path / "volume.zarr"
    labels = np.zeros((2, 4, 4), dtype=np.uint64)
    labels[:, :2, :2] = [[7, 7], [7, 3]]
    labels[:, :2, 2:] = [[1, 2], [2, 1]]  # a tie: smallest wins
    io.write_full(root, "seg", labels, (2, 4, 4), voxel_size=(40, 8, 8), is_label=True)
    io.build_pyramid(root, "seg", levels=2)
    down = io.open_array(root, "seg", 1)[...]
    assert down[0, 0, 0] == 7 and down[0, 0, 1] == 1
    assert down.dtype == np.uint64


def test_ome_zarr_reader_reads_what_we_wrote(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root = tmp_path / "volume.zarr"
    raw = np.random.default_rng(2).integers(0, 256, size=(8, 64, 64), dtype=np.uint8)
    io.write_full(root, "raw", raw, (4, 32, 32), voxel_size=(40, 8, 8))
    io.build_pyramid(root, "raw", levels=3)
    aff = np.zeros((3, 8, 64, 64), dtype=np.uint8)
    io.write_full(root, "affinities", aff, (3, 4, 32, 32), voxel_size=(40, 8, 8), channels=["z", "y", "x"])

    nodes = list(Reader(parse_url(str(root / "raw")))())
    image = nodes[0]
    assert len(image.data) == 3
    assert np.array_equal(np.asarray(image.data[0]), raw)
    ms = image.metadata
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    scales = [t[0]["scale"] for t in ms["coordinateTransformations"]]
    assert scales == [[40, 8, 8], [40, 16, 16], [40, 32, 32]]

    aff_node = list(Reader(parse_url(str(root / "affinities")))())[0]
    assert [a["name"] for a in aff_node.metadata["axes"]] == ["c", "z", "y", "x"]
    assert aff_node.data[0].shape == (3, 8, 64, 64)


def test_create_array_rejects_mismatched_axes_and_missing_arrays_are_named(tmp_path):
    with pytest.raises(ValueError, match="axes"):
        io.create_array(tmp_path / "v.zarr", "raw", (4, 4), "uint8", (4, 4), (40, 8, 8))
    with pytest.raises(FileNotFoundError, match="no array 'segmentation'"):
        io.open_array(tmp_path / "v.zarr", "segmentation")


def test_recreating_an_array_replaces_old_levels(tmp_path):
    root = tmp_path / "v.zarr"
    io.write_full(root, "raw", np.ones((2, 16, 16), np.uint8), (2, 8, 8), (40, 8, 8))
    io.build_pyramid(root, "raw", 3)
    io.write_full(root, "raw", np.zeros((2, 8, 8), np.uint8), (2, 8, 8), (40, 8, 8))
    assert io.read_meta(root, "raw").levels == 1
    assert not (root / "raw" / "1").exists()


def test_ensure_array_grows_in_place_and_recreates_otherwise(tmp_path):
    root = tmp_path / "v.zarr"
    data = np.arange(4 * 10 * 12, dtype=np.uint16).reshape(4, 10, 12)
    io.write_full(root, "a", data, (2, 5, 4), (40, 8, 8))
    array, status = io.ensure_array(root, "a", (4, 10, 16), np.uint16, (2, 5, 4), (40, 8, 8))
    assert status == "resized" and array.shape == (4, 10, 16)
    out = np.asarray(io.open_array(root, "a")[...])
    np.testing.assert_array_equal(out[:, :, :12], data)
    assert not out[:, :, 12:].any()
    assert io.ensure_array(root, "a", (4, 10, 16), np.uint16, (2, 5, 4), (40, 8, 8))[1] == "kept"
    assert io.ensure_array(root, "a", (4, 10, 8), np.uint16, (2, 5, 4), (40, 8, 8))[1] == "created"
    assert not np.asarray(io.open_array(root, "a")[...]).any()


def test_reflect_index_matches_numpy_reflect_padding():
    a = np.arange(5)
    for pad in (1, 4, 11):
        expected = np.pad(a, pad, mode="reflect")
        assert np.array_equal(a[io.reflect_index(np.arange(-pad, 5 + pad), 5)], expected)
    assert np.array_equal(io.reflect_index(np.arange(-2, 3), 1), np.zeros(5, int))


def test_read_padded_equals_padding_the_whole_volume():
    vol = np.random.default_rng(0).integers(0, 255, (6, 9, 7), dtype=np.uint8)
    padded = np.pad(vol, 4, mode="reflect")
    for start, shape in [((-4, -4, -4), (14, 17, 15)), ((2, -3, 5), (3, 5, 6)), ((0, 0, 0), (6, 9, 7))]:
        got = io.read_padded(vol, start, shape)
        sl = tuple(slice(s + 4, s + 4 + n) for s, n in zip(start, shape))
        assert np.array_equal(got, padded[sl])
