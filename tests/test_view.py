"""Annotation layers and segment properties read back from their binary format; the local viewer, seen by headless
Chromium: segmentation and mesh pixels drawn, not a blank or an error page."""

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from connectomix import cli, io
from connectomix.blockwise import run_step
from connectomix.mesh import STAGE
from connectomix.mesh import setup as mesh_setup

pytest.importorskip("neuroglancer")

VS = (40.0, 8.0, 8.0)


def _synapses():
    return pd.DataFrame({
        "id": np.array([11, 12, 13], np.uint64),
        "pre_pt_position": [[80.0, 96.0, 200.0], [160.0, 40.0, 80.0], [300.0, 300.0, 400.0]],
        "post_pt_position": [[88.0, 96.0, 200.0], [160.0, 48.0, 80.0], [300.0, 308.0, 400.0]],
        "pre_pt_root_id": np.array([5, 7, 5], np.uint64), "post_pt_root_id": np.array([7, 9, 0], np.uint64),
        "size": [40, 70, 25], "score": [0.5, 0.25, 0.75],
    })


def _neurons():
    return pd.DataFrame({
        "id": np.array([5, 7, 9], np.uint64), "is_neuron": [True, True, False],
        "soma_x_nm": [150.0, 260.0, np.nan], "soma_y_nm": [160.0, 120.0, np.nan], "soma_z_nm": [400.0, 120.0, np.nan],
        "soma_radius_nm": [60.0, 40.0, np.nan], "n_pre": [2, 1, 0], "n_post": [0, 1, 1],
        "cell_type": pd.array(["excitatory", "inhibitory", None], dtype=object),
    })


def _annotations(data: bytes, item: int):
    """(encoded annotations, ids) of a multiple-annotation chunk (spatial or relationship index)."""
    n = struct.unpack("<Q", data[:8])[0]
    body = data[8:8 + n * item]
    ids = np.frombuffer(data[8 + n * item:], "<u8")
    assert len(ids) == n
    return [body[i * item:(i + 1) * item] for i in range(n)], ids.tolist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset folder as the workflow leaves it: volume.zarr (raw, segmentation), precomputed segmentation with
    meshes, annotation layers."""
    tmp = tmp_path_factory.mktemp("view") / "tiny"
    z, y, x = np.mgrid[:24, :48, :48]
    labels = np.zeros((24, 48, 48), np.uint64)
    labels[((z - 12) / 9) ** 2 + ((y - 20) / 14) ** 2 + ((x - 18) / 14) ** 2 < 1] = 5
    labels[2:20, 30:46, 30:46] = 7
    labels[(labels == 0) & (x < 6)] = 9
    raw = (120 + 60 * (labels > 0) + 20 * np.sin(x / 3.0)).astype(np.uint8)
    root = tmp / "volume.zarr"
    io.write_full(root, "raw", raw, (8, 16, 16), VS)
    io.write_full(root, "segmentation", labels, (8, 16, 16), VS, is_label=True)
    seg_dir = tmp / "precomputed" / "segmentation"
    assert cli.main(["export", "neuroglancer", "--volume", str(root), "--precomputed", str(seg_dir)]) == 0
    mesh_setup(root, tmp / "mesh", {"min_segment_voxels": 10}, (8, 32, 32))
    run_step(STAGE, tmp / "mesh")
    assert cli.main(["mesh", "finish", "--work-dir", str(tmp / "mesh"), "--out", str(seg_dir / "mesh")]) == 0
    _synapses().to_parquet(tmp / "synapses.parquet")
    _neurons().to_parquet(tmp / "neurons.parquet")
    pd.DataFrame({"roi_id": [3], "neuron_id": np.array([7], np.uint64), "distance": [0.1],
                  "confidence": [0.9]}).to_parquet(tmp / "matches.parquet")
    pd.DataFrame({"roi_id": [3], "neuron_id": np.array([7], np.uint64), "pref_orientation_deg": [45.0],
                  "osi": [0.6]}).to_parquet(tmp / "tuning.parquet")
    assert cli.main(["export", "annotations", "--precomputed", str(tmp / "precomputed"),
                     "--synapses", str(tmp / "synapses.parquet"), "--neurons", str(tmp / "neurons.parquet"),
                     "--matches", str(tmp / "matches.parquet"), "--tuning", str(tmp / "tuning.parquet"),
                     "--summary", str(tmp / "annotations.json")]) == 0
    return tmp


def test_synapse_layer_reads_back(dataset):
    layer = dataset / "precomputed" / "synapses"
    info = json.loads((layer / "info").read_text())
    assert info["@type"] == "neuroglancer_annotations_v1" and info["annotation_type"] == "line"
    assert [r["id"] for r in info["relationships"]] == ["pre_segment", "post_segment"]
    props = [p["id"] for p in info["properties"]]
    item = 24 + 4 * len(props)  # two points (x, y, z float32) and 4-byte properties
    encoded, ids = _annotations((layer / "spatial0" / "0_0_0").read_bytes(), item)
    assert ids == [11, 12, 13]
    syn = _synapses()
    for blob, (_, row) in zip(encoded, syn.iterrows()):
        geometry = np.frombuffer(blob[:24], "<f4")
        assert np.allclose(geometry, row["pre_pt_position"] + row["post_pt_position"])
        fmt = "<" + "".join("f" if p == "score" else "i" for p in props)
        values = dict(zip(props, struct.unpack(fmt, blob[24:])))
        assert values["size"] == row["size"] and values["score"] == pytest.approx(row["score"])
    # by id: the annotation, then per relationship a count and the segment ids
    blob = (layer / "by_id" / "13").read_bytes()
    assert struct.unpack("<IQI", blob[item:item + 16]) == (1, 5, 0)
    # relationship indexes: the synapses of each partner
    assert _annotations((layer / "rel_pre_segment" / "5").read_bytes(), item)[1] == [11, 13]
    assert _annotations((layer / "rel_post_segment" / "9").read_bytes(), item)[1] == [12]
    assert not (layer / "rel_post_segment" / "0").exists()


def test_somata_matches_and_segment_properties(dataset):
    pre = dataset / "precomputed"
    assert json.loads((dataset / "annotations.json").read_text()) == {
        "synapses": 3, "somata": 2, "segment_properties": 2, "matches": 1}
    info = json.loads((pre / "somata" / "info").read_text())
    cell_type = next(p for p in info["properties"] if p["id"] == "cell_type")
    assert cell_type["enum_labels"][1:] == ["excitatory", "inhibitory"]
    encoded, ids = _annotations((pre / "somata" / "spatial0" / "0_0_0").read_bytes(), 12 + 4 + 4)
    assert ids == [5, 7]
    assert np.allclose(np.frombuffer(encoded[1][:12], "<f4"), [260.0, 120.0, 120.0])
    assert struct.unpack("<fB", encoded[1][12:17]) == (40.0, 2)  # radius, then the enum (inhibitory)
    encoded, ids = _annotations((pre / "matches" / "spatial0" / "0_0_0").read_bytes(), 12 + 4 * 4)
    assert ids == [3] and np.allclose(np.frombuffer(encoded[0][:12], "<f4"), [260.0, 120.0, 120.0])
    seg_info = json.loads((pre / "segmentation" / "info").read_text())
    assert seg_info["mesh"] == "mesh" and seg_info["segment_properties"] == "segment_properties"
    props = json.loads((pre / "segmentation" / "segment_properties" / "info").read_text())
    assert props["@type"] == "neuroglancer_segment_properties" and props["inline"]["ids"] == ["5", "7"]
    by_id = {p["id"]: p for p in props["inline"]["properties"]}
    assert by_id["label"]["values"] == ["neuron 5 excitatory", "neuron 7 inhibitory"]
    tags = by_id["tags"]["tags"]
    assert [[tags[i] for i in t] for t in by_id["tags"]["values"]] == [["soma", "excitatory"],
                                                                       ["soma", "tuned", "inhibitory"]]
    assert by_id["pref_orientation_deg"]["values"] == [-1.0, 45.0]


def test_view_state_has_every_layer(dataset):
    from connectomix.view import dataset_state

    st = dataset_state(dataset, "http://127.0.0.1:1")
    layers = {layer["name"]: layer for layer in st["layers"]}
    assert list(layers) == ["raw", "segmentation", "synapses", "somata", "matches"]  # no skeletons exported here
    assert layers["segmentation"]["segments"][0] in ("5", "7")  # the largest meshes selected
    assert layers["synapses"]["linkedSegmentationLayer"] == {"pre_segment": "segmentation",
                                                            "post_segment": "segmentation"}
    assert layers["raw"]["source"] == "zarr://http://127.0.0.1:1/volume.zarr/raw"


def test_file_server_is_local_and_sends_cors(dataset):
    import urllib.error
    import urllib.request

    from connectomix.view import serve_folder

    server = serve_folder(dataset)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{url}/precomputed/segmentation/info") as reply:
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
            info = json.loads(reply.read())
        # the folders the info names are served only where they exist (no skeletons were exported here)
        assert info["mesh"] == "mesh" and "skeletons" not in info
        assert json.loads((dataset / "precomputed" / "segmentation" / "info").read_text())["skeletons"] == "skeletons"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{url}/precomputed/segmentation/mesh/404:0")
    finally:
        server.shutdown()


def _chromium():
    from connectomix.view import find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium: scripts/install-system-deps.sh installs the Debian package (needs root and apt-get)")
    return chromium


def test_headless_chromium_draws_segmentation_and_meshes(dataset, tmp_path):
    """`connectomix view --screenshot`: headless Chromium loads the served viewer, the client waits for its data,
    the PNG shows segment colours in the 2D panel (left) and lit mesh surfaces in the 3D panel (right)."""
    from PIL import Image

    chromium = _chromium()
    out = tmp_path / "view.png"
    result = subprocess.run([sys.executable, "-m", "connectomix", "view", str(dataset), "--screenshot", str(out),
                             "--chromium", chromium, "--size", "800", "400", "--timeout", "120"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert pixels.shape == (400, 800, 3)
    left, right = pixels[:, :400], pixels[:, 400:]
    # segment colours: saturated pixels (the EM alone is grey); yellow is the annotation and bounding-box colour
    saturation = lambda p: p.max(axis=2) - p.min(axis=2)  # noqa: E731
    not_yellow = lambda p: ~((p[..., 0] > 180) & (p[..., 1] > 180) & (p[..., 2] < 90))  # noqa: E731
    assert ((saturation(left) > 60) & not_yellow(left)).mean() > 0.02
    # meshes: the 3D panel (black without them, the cross-sections hidden) holds coloured surfaces
    lit = (right.max(axis=2) > 40) & not_yellow(right)
    assert lit.mean() > 0.03
    assert ((saturation(right) > 60) & lit).mean() > 0.02
    shutil.copy(out, tmp_path / "kept.png")
