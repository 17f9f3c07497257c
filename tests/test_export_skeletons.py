"""Skeleton and Neuroglancer exports, read back by real clients (navis, cloud-volume)."""

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import cli, io
from connectomix.skeletonize import core
from connectomix.skeletonize.morphology import skeletons_to_table, table_to_trees
from connectomix.synthetic.skeletons import synthetic_neurons

VS = (40.0, 8.0, 8.0)
SMALL = {"halo": [4, 24, 24], "teasar": {"const": 150, "soma_invalidation_const": 150,
                                         "soma_detection_threshold": 120, "soma_acceptance_threshold": 150},
         "min_segment_voxels": 500}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    labels, _ = synthetic_neurons((16, 128, 128), VS, n_neurons=3, seed=4, soma_radius_nm=(60, 70),
                                  neurite_radius_nm=(40, 70), branches=1)
    root = tmp / "volume.zarr"
    io.write_full(root, "segmentation", labels, (8, 64, 64), VS, is_label=True)
    table = skeletons_to_table(core.skeletonize_blockwise(labels, VS, (8, 64, 64), SMALL))
    table.to_parquet(tmp / "skeletons.parquet")
    seg_dir = tmp / "precomputed" / "segmentation"
    assert cli.main(["export", "neuroglancer", "--volume", str(root), "--precomputed", str(seg_dir)]) == 0
    assert cli.main(["export", "skeletons", "--skeletons", str(tmp / "skeletons.parquet"), "--params",
                     json.dumps(SMALL), "--swc-dir", str(tmp / "swc"), "--precomputed", str(seg_dir),
                     "--summary", str(tmp / "export.json")]) == 0
    return tmp, labels, table


def test_swc_read_back_with_navis(exported):
    navis = pytest.importorskip("navis")
    tmp, _, table = exported
    trees = table_to_trees(table)
    assert sorted(int(p.stem) for p in (tmp / "swc").glob("*.swc")) == sorted(trees)
    for label, (skel, _) in trees.items():
        n = navis.read_swc(tmp / "swc" / f"{label}.swc")
        assert n.n_nodes == len(skel)
        assert float(n.cable_length) == pytest.approx(skel.cable_length(), rel=1e-4)
        nodes = n.nodes.sort_values("node_id")
        assert np.allclose(nodes[["x", "y", "z"]].to_numpy(), skel.vertices[:, ::-1], atol=1e-3)
        assert np.allclose(nodes["radius"].to_numpy(), skel.radii, atol=1e-3)
        assert n.n_trees == 1 and n.n_root == 1


def test_precomputed_read_back_with_cloudvolume(exported):
    cloudvolume = pytest.importorskip("cloudvolume")
    tmp, labels, table = exported
    url = f"precomputed://file://{tmp / 'precomputed' / 'segmentation'}"
    vol = cloudvolume.CloudVolume(url, progress=False)
    assert tuple(vol.resolution) == (8, 8, 40) and tuple(vol.volume_size) == (128, 128, 16)
    data = np.asarray(vol[:, :, :])[..., 0]
    assert np.array_equal(data.transpose(2, 1, 0), labels)
    for label, (skel, _) in table_to_trees(table).items():
        s = vol.skeleton.get(label)
        assert len(s.vertices) == len(skel)
        assert np.allclose(s.vertices, skel.vertices[:, ::-1], atol=1e-2)  # nm (x, y, z)
        assert s.cable_length() == pytest.approx(skel.cable_length(), rel=1e-4)
        assert np.allclose(s.radius, skel.radii, atol=1e-3)
    # Files are uncompressed so a static server can hand them to Neuroglancer.
    assert not list((tmp / "precomputed").rglob("*.gz"))


def test_neuroglancer_state_layers(exported, tmp_path):
    tmp, _, table = exported
    morph = pd.DataFrame({"id": table["id"].unique().astype("uint64"),
                          "cable_length_nm": np.arange(table["id"].nunique(), dtype=float)})
    morph.to_parquet(tmp_path / "morphology.parquet")
    out = tmp_path / "neuroglancer.json"
    assert cli.main(["export", "neuroglancer", "--volume", str(tmp / "volume.zarr"), "--state", str(out),
                     "--base-url", str(tmp), "--morphology", str(tmp_path / "morphology.parquet"), "--top", "2"]) == 0
    state = json.loads(out.read_text())
    layers = {layer["name"]: layer for layer in state["layers"]}
    assert [layer["type"] for layer in state["layers"]] == ["image", "segmentation", "segmentation"]
    assert layers["raw"]["source"].startswith("zarr://")
    assert state["dimensions"]["z"] == [40e-9, "m"] and state["dimensions"]["x"] == [8e-9, "m"]
    # Sources resolve to what was exported.
    seg_path = layers["segmentation"]["source"].removeprefix("precomputed://")
    assert json.loads(open(f"{seg_path}/info").read())["skeletons"] == "skeletons"
    skel_path = layers["skeletons"]["source"].removeprefix("precomputed://")
    assert json.loads(open(f"{skel_path}/info").read())["@type"] == "neuroglancer_skeletons"
    longest = morph.sort_values("cable_length_nm", ascending=False)["id"].head(2).astype(str).tolist()
    assert layers["segmentation"]["segments"] == longest == layers["skeletons"]["segments"]
