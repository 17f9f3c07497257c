"""Meshes: blockwise zmesh welded per segment equals whole-volume meshing (closed, no duplicate faces); the stage's
precomputed meshes are read back by cloud-volume."""

import json

import numpy as np
import pytest

from connectomix import cli, io
from connectomix.blocks import BlockGrid
from connectomix.blockwise import run_step
from connectomix.mesh import (STAGE, area, mesh_block, mesh_whole, open_edges, read_fragment, simplify, weld)
from connectomix.mesh import setup as mesh_setup

pytest.importorskip("zmesh")

VS = (40.0, 8.0, 8.0)


def _labels(shape=(20, 40, 40)):
    """An ellipsoid cut by every block face of (8, 16, 16) blocks, a slab on the volume's face, a hollow shell."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    labels = np.zeros(shape, np.uint64)
    labels[((z - 10) / 8) ** 2 + ((y - 20) / 15) ** 2 + ((x - 18) / 14) ** 2 < 1] = 5
    labels[0:6, 3:30, 30:40] = 7  # touches the volume's low z and high x faces
    r = np.sqrt(((z - 13) / 4.0) ** 2 + ((y - 8) / 6.0) ** 2 + ((x - 8) / 6.0) ** 2)
    labels[(r > 0.6) & (r < 1)] = 9
    return labels


def _blockwise(labels, block_shape=(8, 16, 16)):
    grid = BlockGrid(labels.shape, block_shape, (1, 1, 1))
    pieces = {}
    for block in grid:
        meshes, _ = mesh_block(labels[block.read.slices], block, VS, labels.shape)
        for label, piece in meshes.items():
            pieces.setdefault(label, []).append(piece)
    return {label: weld(p, VS) for label, p in pieces.items()}, len(grid)


def _duplicate_faces(faces):
    return len(faces) - len(np.unique(np.sort(faces, axis=1), axis=0))


def test_blockwise_meshes_are_closed_and_equal_whole_volume_meshing():
    labels = _labels()
    whole = mesh_whole(labels, VS)
    blockwise, blocks = _blockwise(labels)
    assert blocks > 8 and set(blockwise) == set(whole) == {5, 7, 9}
    for label, (v, f) in blockwise.items():
        wv, wf = whole[label]
        assert open_edges(f) == 0, label  # closed: every edge in exactly two faces, also on block faces
        assert _duplicate_faces(f) == 0, label
        assert len(f) == len(wf) and len(v) == len(wv), label
        assert area(v, f) == pytest.approx(area(wv, wf), rel=1e-9), label
        # the slab's faces on the volume's faces are closed where the label touches them
        assert np.allclose(np.sort(v, axis=0), np.sort(wv, axis=0))
    # vertices in nm (x, y, z), voxel-centred: label 7 spans x voxels 30..39 -> [240, 320) nm, z voxels 0..5
    v7 = blockwise[7][0]
    assert v7[:, 0].min() == pytest.approx(240) and v7[:, 0].max() == pytest.approx(320)
    assert v7[:, 2].min() == pytest.approx(0) and v7[:, 2].max() == pytest.approx(240)


def test_simplified_meshes_keep_their_area():
    v, f = _blockwise(_labels())[0][5]
    sv, sf = simplify(v, f, VS, reduction_factor=10, max_error_nm=8.0)
    assert len(sf) < len(f) / 2
    assert open_edges(sf) == 0
    assert area(sv, sf) == pytest.approx(area(v, f), rel=0.05)


@pytest.fixture(scope="module")
def meshed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mesh")
    labels = _labels((24, 48, 48))
    root = tmp / "volume.zarr"
    io.write_full(root, "segmentation", labels, (8, 16, 16), VS, offset_nm=(400.0, 80.0, 0.0), is_label=True)
    seg_dir = tmp / "precomputed" / "segmentation"
    assert cli.main(["export", "neuroglancer", "--volume", str(root), "--precomputed", str(seg_dir)]) == 0
    work = tmp / "mesh"
    mesh_setup(root, work, {"min_segment_voxels": 50, "reduction_factor": 4}, (8, 32, 32))
    run_step(STAGE, work)
    assert cli.main(["mesh", "finish", "--work-dir", str(work), "--out", str(seg_dir / "mesh"),
                     "--summary", str(tmp / "mesh.json")]) == 0
    return tmp, labels


def test_stage_writes_precomputed_meshes_read_back_with_cloudvolume(meshed):
    cloudvolume = pytest.importorskip("cloudvolume")
    tmp, labels = meshed
    seg_dir = tmp / "precomputed" / "segmentation"
    summary = json.loads((tmp / "mesh.json").read_text())
    assert summary["segments"] == 3 and summary["blocks"] == 12 and summary["bytes"] > 0
    assert json.loads((seg_dir / "info").read_text())["mesh"] == "mesh"
    assert json.loads((seg_dir / "mesh" / "info").read_text())["@type"] == "neuroglancer_legacy_mesh"
    vol = cloudvolume.CloudVolume(f"precomputed://file://{seg_dir}", progress=False)
    offset = np.array([0.0, 80.0, 400.0])  # nm (x, y, z)
    for label in (5, 7, 9):
        m = vol.mesh.get(label)
        v, f = read_fragment((seg_dir / "mesh" / f"{label}:0:0").read_bytes())
        assert len(m.faces) > 0 and open_edges(f) == 0 and _duplicate_faces(f) == 0
        # the mesh lies on the segment's voxels, in the segmentation's nm frame
        z, y, x = np.nonzero(labels == label)
        lo = offset + np.array([x.min(), y.min(), z.min()]) * np.array(VS[::-1])
        hi = offset + (np.array([x.max(), y.max(), z.max()]) + 1) * np.array(VS[::-1])
        assert np.all(m.vertices >= lo - 8.5) and np.all(m.vertices <= hi + 8.5), label
        assert np.allclose(m.vertices.min(axis=0), v.min(axis=0))
    assert not list((seg_dir / "mesh").glob("*.gz"))


def test_small_segments_get_no_mesh_and_stale_files_go(meshed, tmp_path):
    tmp, _ = meshed
    from connectomix.mesh import finish

    out = tmp_path / "mesh"
    out.mkdir()
    (out / "123:0").write_text("{}")
    summary = finish(tmp / "mesh", out, segments=None)
    assert summary["segments"] == 3 and not (out / "123:0").exists()
    s = json.loads((tmp / "mesh" / "setup.json").read_text())
    s["params"]["min_segment_voxels"] = 10 ** 9
    (tmp / "mesh" / "setup.json").write_text(json.dumps(s))
    assert finish(tmp / "mesh", out)["segments"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["info"]


def test_figure_draws_meshes_with_their_synapses(meshed, tmp_path):
    import pandas as pd

    tmp, _ = meshed
    synapses = pd.DataFrame({"pre_pt_root_id": np.array([5, 7], np.uint64), "post_pt_root_id": np.array([7, 9],
                                                                                                       np.uint64),
                             "pre_pt_position": [[100.0, 200.0, 500.0], [250.0, 100.0, 500.0]],
                             "post_pt_position": [[108.0, 200.0, 500.0], [250.0, 108.0, 500.0]]})
    neurons = pd.DataFrame({"id": np.array([7, 5], np.uint64), "soma_x_nm": [250.0, np.nan]})
    synapses.to_parquet(tmp_path / "synapses.parquet")
    neurons.to_parquet(tmp_path / "neurons.parquet")
    out = tmp_path / "neurons.png"
    assert cli.main(["mesh", "figure", "--mesh-dir", str(tmp / "precomputed" / "segmentation" / "mesh"),
                     "--synapses", str(tmp_path / "synapses.parquet"), "--neurons", str(tmp_path / "neurons.parquet"),
                     "--count", "2", "--out", str(out)]) == 0
    from connectomix.mesh.render import chosen_neurons

    assert chosen_neurons(tmp / "precomputed" / "segmentation" / "mesh", neurons, 2)[0] == 7  # the soma first
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
