"""Segmentation: fragments, RAG, agglomeration, stitching across blocks, stable ids, outputs, CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import blockwise, cli, io
from connectomix.evaluate.segmentation import contingency, fragment_bound, metrics, voi
from connectomix.segment import params as seg_params
from connectomix.segment import stitch
from connectomix.segment.agglomerate import apply_lut, hierarchical, lookup_table
from connectomix.segment.fragments import block_of_fragment, fragment_id_base
from connectomix.segment.rag import Rag, contract, merge_rags, volume_rag
from connectomix.synthetic import segment as syn

VOXEL = (40, 8, 8)
SHAPE = (16, 96, 96)
CHUNKS = (8, 16, 16)


def _volume(tmp_path, gt, seed=2, **degrade):
    affs = syn.degrade(syn.affinities_from_labels(gt), seed=seed, **degrade)
    root = tmp_path / "volume.zarr"
    syn.write_test_volume(root, affs, VOXEL, (8, 32, 32), gt=gt)
    return root, affs


def _run(root, work, block_shape, params=None):
    summary = stitch.segment_volume(root, work, params or {}, block_shape, CHUNKS)
    return summary, np.asarray(io.open_array(root, "segmentation")[...])


@pytest.fixture(scope="module")
def voronoi():
    return syn.voronoi_labels(SHAPE, 40, seed=1, anisotropy=VOXEL)


def test_block_jobs_on_a_process_pool_give_the_serial_result(tmp_path, voronoi):
    """segment_volume(workers=2) runs the blockwise steps as independent jobs, like the workflow: same output."""
    root, _ = _volume(tmp_path, voronoi)
    serial, seg = _run(root, tmp_path / "serial", (8, 48, 48))
    pooled = stitch.segment_volume(root, tmp_path / "pooled", {}, (8, 48, 48), CHUNKS, workers=2)
    assert pooled["blocks"] == serial["blocks"] == 8 and pooled["segments"] == serial["segments"] > 1
    np.testing.assert_array_equal(np.asarray(io.open_array(root, "segmentation")[...]), seg)
    for name in ("graph.npz", "lut.npz"):
        with np.load(tmp_path / "serial" / name) as a, np.load(tmp_path / "pooled" / name) as b:
            assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files), name


def test_block_invariance_8_blocks_vs_one(tmp_path, voronoi):
    root, _ = _volume(tmp_path, voronoi)
    _, one = _run(root, tmp_path / "one", SHAPE)
    summary, eight = _run(root, tmp_path / "eight", (8, 48, 48))
    assert summary["blocks"] == 8
    assert (one > 0).all() and (eight > 0).all()
    m = metrics(one, eight, ignore=())
    assert m["voi_split"] + m["voi_merge"] <= 0.02, m
    # and it is a good segmentation of the ground truth (noisy affinities with holes and false boundaries)
    acc = metrics(voronoi, eight)
    assert acc["voi"] < 0.5, acc


def test_object_spanning_8_blocks_is_one_segment(tmp_path, voronoi):
    gt = voronoi.copy()
    z, y, x = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    ball = ((z - 8) * 40) ** 2 + ((y - 48) * 8) ** 2 + ((x - 48) * 8) ** 2 < 200**2  # centred on the 8-block corner
    gt[ball] = 1000
    gt[(ball ^ (((z - 8) * 40) ** 2 + ((y - 48) * 8) ** 2 + ((x - 48) * 8) ** 2 < 216**2))] = 0  # its membrane
    root, _ = _volume(tmp_path, gt, noise=0.05, holes=0, false_boundaries=0)
    _, seg = _run(root, tmp_path / "w", (8, 48, 48))
    inside = seg[ball]
    ids, counts = np.unique(inside, return_counts=True)
    assert counts.max() / counts.sum() > 0.99, (ids, counts)
    main = ids[np.argmax(counts)]
    corners = [(7, 47, 47), (8, 48, 48), (7, 48, 47), (8, 47, 48)]
    assert all(seg[c] == main for c in corners)
    frags = np.asarray(io.open_array(root, "fragments")[...])
    blocks = {tuple(b) for b in block_of_fragment(np.unique(frags[seg == main]))}
    assert len(blocks) == 8  # its fragments come from all 8 blocks, stitched into one segment
    assert main == frags[seg == main].min()  # id = lowest fragment id (content-derived)


def test_stable_ids_when_a_block_is_added(tmp_path):
    small = syn.voronoi_labels((16, 96, 96), 40, seed=3, anisotropy=VOXEL)
    extra = syn.voronoi_labels((16, 96, 48), 20, seed=4, anisotropy=VOXEL) + np.uint64(1000)
    extra[extra == 1000] = 0
    big = np.concatenate([small, extra], axis=2)
    big[:, :, 95:97] = 0  # a membrane between the old volume and the new column of blocks
    affs = syn.degrade(syn.affinities_from_labels(big), seed=2)
    root_a, root_b = tmp_path / "a" / "volume.zarr", tmp_path / "b" / "volume.zarr"
    syn.write_test_volume(root_a, np.ascontiguousarray(affs[..., :96]), VOXEL, (8, 32, 32))  # the same data,
    syn.write_test_volume(root_b, affs, VOXEL, (8, 32, 32))  # plus one more column of blocks along x
    _, seg_a = _run(root_a, tmp_path / "a" / "w", (8, 48, 48))
    _, seg_b = _run(root_b, tmp_path / "b" / "w", (8, 48, 48))
    # every segment that lies in the first block column (far from the new blocks' halo) keeps id and voxels
    checked = 0
    for sid in np.unique(seg_a):
        where = seg_a == sid
        if np.nonzero(where)[2].max() >= 40:
            continue
        assert np.array_equal(seg_b[:, :, :96] == sid, where), sid
        checked += 1
    assert checked >= 5
    # each segment's id is its lowest fragment id (fragment ids = block position + local id), no global counter
    frags = np.asarray(io.open_array(root_a, "fragments")[...])
    lowest = pd.DataFrame({"s": seg_a.ravel(), "f": frags.ravel()}).groupby("s")["f"].min()
    assert (lowest.index.to_numpy() == lowest.to_numpy()).all()
    assert len(np.unique(block_of_fragment(lowest.index.to_numpy()), axis=0)) > 1


def test_block_rags_merge_to_the_volume_rag(tmp_path, voronoi):
    root, affs = _volume(tmp_path, voronoi)
    # the quantile method: block tables keep their histograms
    s = stitch.setup(root, tmp_path / "w", {"agglomerate": {"method": "quantile"}}, (8, 48, 48), CHUNKS)
    grid = blockwise.grid_of(s)
    for step in ("fragments", "rag"):
        blockwise.run_step(stitch.STAGE, tmp_path / "w", step)
    merged = merge_rags([Rag.from_npz(tmp_path / "w" / "edges" / f"{b}.npz") for b in grid.ids()])
    frags = np.asarray(io.open_array(root, "fragments")[...])
    whole = volume_rag(frags, affs, syn.NN_OFFSETS)
    for field in ("u", "v", "count", "total", "count_z"):
        assert np.array_equal(getattr(merged, field), getattr(whole, field)), field
    assert 0 < merged.count_z.sum() < merged.count.sum()
    assert np.allclose(merged.quantile(50), whole.quantile(50))
    assert len(merged.same_u) > 0  # face-cut fragments were found
    # fragment ids are unique per block and written only inside the block that made them
    for b in grid:
        ids = np.unique(frags[b.write.slices])
        assert (block_of_fragment(ids[ids > 0]) == np.array(b.index)).all()
    markers = list((tmp_path / "blocks" / "segment_fragments").glob("*.json"))
    assert len(markers) == 8
    # contracting without histograms (for a mean agglomeration) pools counts and sums exactly as with them
    source = np.unique(merged.same_v)[::2]
    target = np.full(len(source), merged.u.min(), np.uint64)
    full, lean = contract(merged, source, target), contract(merged, source, target, histograms=False)
    assert len(full) < len(merged) and len(full.hist_edge) > 0 and len(lean.hist_edge) == 0
    for field in ("u", "v", "count", "total", "count_z"):
        assert np.array_equal(getattr(full, field), getattr(lean, field)), field
    for a, b in zip(hierarchical(full, 0.5), hierarchical(lean, 0.5)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_exact_affinities_of_touching_cells_segment_perfectly(tmp_path, mode):
    """Cells that touch along one-voxel interfaces (no membrane voxels): the fragments' borders must follow the
    zero-affinity edges exactly, so exact affinities give the ground truth back (blockwise, 8 blocks)."""
    gt = syn.voronoi_labels(SHAPE, 40, seed=5, anisotropy=VOXEL, membrane=0)
    affs = np.rint(syn.affinities_from_labels(gt) * 255).astype(np.uint8)
    root = tmp_path / "volume.zarr"
    syn.write_test_volume(root, affs, VOXEL, (8, 32, 32))
    _, seg = _run(root, tmp_path / "work", (8, 64, 64), {"fragments": {"mode": mode}})
    m = metrics(gt, seg)
    assert m["voi_split"] < 0.01 and m["voi_merge"] < 0.01, m


def test_thin_processes_get_their_own_fragments():
    """An object only one or two voxels wide in a section has no boundary-free voxel (no distance seed); it must
    still be a fragment of its own, not flooded into its neighbour."""
    from connectomix.segment.fragments import watershed_fragments

    gt = np.ones((1, 24, 24), np.uint64)
    gt[0, :, 11:13] = 2  # a two-voxel-wide process between two halves of a cell
    gt[0, :, 13:] = 3
    affs = syn.affinities_from_labels(gt)
    frags = watershed_fragments(affs, syn.NN_OFFSETS, VOXEL, seg_params.resolve({"fragments": {"min_size": 4}}), "2d")
    assert len(np.unique(frags[gt == 2])) == 1
    assert not set(np.unique(frags[gt == 2])) & set(np.unique(frags[gt != 2]))


def test_hierarchical_matches_waterz_on_the_same_fragments(voronoi):
    waterz = pytest.importorskip("waterz")
    from connectomix.segment.fragments import watershed_fragments

    affs = syn.degrade(syn.affinities_from_labels(voronoi), seed=5)
    params = seg_params.resolve({})
    frags = watershed_fragments(affs, syn.NN_OFFSETS, VOXEL, params, "2d").astype(np.uint64)
    rag = volume_rag(frags, affs, syn.NN_OFFSETS)
    nodes, merges = hierarchical(rag, 0.5)
    ours = apply_lut(frags, *lookup_table(nodes, merges))
    theirs = next(waterz.agglomerate(affs.astype(np.float32) / 255, [0.5], fragments=frags.copy()))
    m = metrics(ours + 1, theirs, ignore=())
    assert m["voi"] < 1e-6, m
    assert len(merges) and np.all(np.diff(merges["score"]) >= -1e-12)  # scores never decrease


def test_quantile_statistics():
    frags = np.zeros((1, 1, 6), np.uint64)
    frags[..., :3], frags[..., 3:] = 5, 9
    affs = np.zeros((3, 1, 1, 6), np.uint8)
    affs[2, 0, 0, 3] = 200  # the only contact (x=3 <-> x=2)
    rag = volume_rag(frags, affs, syn.NN_OFFSETS)
    assert list(rag.u) == [5] and list(rag.v) == [9] and rag.count[0] == 1
    assert rag.mean[0] == pytest.approx(200 / 255) and rag.quantile(50)[0] == pytest.approx(200 / 255)
    values = np.array([10, 20, 30, 200], np.uint8)
    r = Rag(np.array([1], np.uint64), np.array([2], np.uint64), np.array([4], np.uint64),
            np.array([values.sum()], np.uint64), np.zeros(4, np.int64), values, np.ones(4, np.uint64))
    assert r.quantile(50)[0] * 255 == pytest.approx(20)  # lower median, as waterz's histogram quantile
    assert r.quantile(100)[0] * 255 == pytest.approx(200)


@pytest.mark.parametrize("method", ["mutex", "quantile"])
def test_alternative_agglomerations(tmp_path, voronoi, method):
    root, _ = _volume(tmp_path, voronoi)
    _, seg = _run(root, tmp_path / "w", (8, 48, 48), {"agglomerate": {"method": method}})
    acc = metrics(voronoi, seg)
    assert acc["voi"] < 0.8, acc


@pytest.mark.parametrize("method", ["mean", "quantile"])
def test_rags_keep_histograms_only_for_quantile(tmp_path, voronoi, method, monkeypatch):
    root, _ = _volume(tmp_path, voronoi)
    params = {"agglomerate": {"method": method}}
    _, seg = _run(root, tmp_path / "w", (8, 48, 48), params)
    monkeypatch.setattr(stitch, "_reads_histograms", lambda p: True)  # what every method wrote before
    _, seg_full = _run(root, tmp_path / "full", (8, 48, 48), params)
    for name in ["graph.npz"] + [f"edges/{b}" for b in ("z0_y0_x0.npz", "z1_y1_x1.npz")]:
        lean, full = Rag.from_npz(tmp_path / "w" / name), Rag.from_npz(tmp_path / "full" / name)
        assert len(full.hist_edge) > 0 and (len(lean.hist_edge) > 0) == (method == "quantile"), name
        for field in ("u", "v", "count", "total", "same_u", "same_v"):
            assert np.array_equal(getattr(lean, field), getattr(full, field)), (name, field)
    with np.load(tmp_path / "w" / "merges.npz") as f, np.load(tmp_path / "full" / "merges.npz") as g:
        assert len(f["merges"]) > 0 and np.array_equal(f["merges"], g["merges"])
    assert np.array_equal(seg, seg_full)
    if method == "mean":  # a table written for the mean cannot be agglomerated by quantiles
        with pytest.raises(ValueError, match="histograms"):
            hierarchical(Rag.from_npz(tmp_path / "w" / "graph.npz"), 0.5, "quantile")


def test_mutex_fragments(tmp_path, voronoi):
    root, _ = _volume(tmp_path, voronoi)
    _, seg = _run(root, tmp_path / "w", (8, 48, 48), {"fragments": {"method": "mutex", "threshold": 0.8}})
    acc = metrics(voronoi, seg)
    assert acc["voi"] < 1.0, acc


def test_segments_parquet(tmp_path, voronoi):
    root, _ = _volume(tmp_path, voronoi)
    stitch.segment_volume(root, tmp_path / "w", {}, (8, 48, 48), CHUNKS, tmp_path / "segments.parquet")
    seg = np.asarray(io.open_array(root, "segmentation")[...])
    df = pd.read_parquet(tmp_path / "segments.parquet")
    expected = ["id", "voxels"] + [f"bbox_{e}_{a}" for a in "zyx" for e in ("start", "stop")] + \
        [f"bbox_{e}_{a}_nm" for a in "zyx" for e in ("start", "stop")] + [f"centroid_{a}_nm" for a in "zyx"]
    assert set(expected) <= set(df.columns)
    assert df["id"].dtype == np.uint64 and df["id"].is_unique
    assert df["voxels"].sum() == seg.size
    row = df.loc[df["voxels"].idxmax()]
    z, y, x = np.nonzero(seg == row["id"])
    assert (row["bbox_start_z"], row["bbox_stop_y"], row["bbox_start_x"]) == (z.min(), y.max() + 1, x.min())
    assert row["centroid_y_nm"] == pytest.approx(y.mean() * VOXEL[1])
    assert row["bbox_stop_z_nm"] == pytest.approx((z.max() + 1) * VOXEL[0])


def test_schema_refuses_an_unknown_segment_key():
    from connectomix import config as cmx_config

    with pytest.raises(ValueError, match="segment"):
        cmx_config.validate({"datasets": {"d": {"voxel_size": [4, 4, 4], "phantom": {}}},
                             "segment": {"agglomerate": {"bogus": 1}}})


def test_fragment_id_layout():
    base = fragment_id_base((3, 2, 1))
    assert block_of_fragment([base + np.uint64(7)]).tolist() == [[3, 2, 1]]
    assert int(fragment_id_base((2047, 2047, 2047))) < 2**63
    with pytest.raises(ValueError):
        fragment_id_base((2048, 0, 0))


def test_cli_end_to_end(tmp_path, capsys):
    gt = syn.voronoi_labels((16, 64, 64), 20, seed=6, anisotropy=VOXEL)
    root, _ = _volume(tmp_path, gt)
    work = tmp_path / "segment"
    blocks = [f"z{i}_y{j}_x{k}" for i in range(2) for j in range(2) for k in range(2)]
    assert cli.main(["segment", "setup", "--volume", str(root), "--work-dir", str(work), "--params",
                     json.dumps({"halo": [2, 16, 16]}), "--block-shape", "8", "32", "32",
                     "--chunk-shape", "8", "32", "32"]) == 0
    for step in ("fragments", "rag"):
        assert cli.main(["segment", "block", "--step", step, "--work-dir", str(work), "--blocks", *blocks]) == 0
    assert cli.main(["segment", "agglomerate", "--work-dir", str(work)]) == 0
    assert cli.main(["segment", "block", "--step", "relabel", "--work-dir", str(work), "--blocks", *blocks]) == 0
    assert cli.main(["segment", "finish", "--work-dir", str(work), "--segments", str(tmp_path / "segments.parquet"),
                     "--summary", str(tmp_path / "segment.json"), "--pyramid-levels", "2"]) == 0
    for stage in ("segment_fragments", "segment_rag", "segment_relabel"):
        marker = json.loads((tmp_path / "blocks" / stage / "z1_y1_x1.json").read_text())
        assert marker["block"] == "z1_y1_x1" and marker["peak_rss_mb"] > 0
    summary = json.loads((tmp_path / "segment.json").read_text())
    assert summary["segments"] == len(pd.read_parquet(tmp_path / "segments.parquet"))
    assert io.read_meta(root, "segmentation").levels == 2
    assert io.read_meta(root, "segmentation").is_label
    seg = np.asarray(io.open_array(root, "segmentation")[...])
    assert metrics(gt, seg)["voi"] < 0.6
    # evaluation CLI + merge
    out = tmp_path / "eval" / "segmentation.json"
    assert cli.main(["evaluate", "segmentation", "--volume", str(root), "--work-dir", str(work), "--gt-array",
                     "gt/labels", "--out", str(out), "--plot", str(tmp_path / "eval" / "sweep.png")]) == 0
    assert (tmp_path / "eval" / "sweep.png").stat().st_size > 1000
    assert cli.main(["evaluate", "merge", str(out), "--out", str(tmp_path / "eval" / "metrics.json")]) == 0
    merged = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"segmentation.voi_split", "segmentation.voi_merge", "segmentation.arand"} <= set(merged)
    # the fragments' own error: their majority-overlap agglomeration, never above what agglomeration reached here
    frags = np.asarray(io.open_array(root, "fragments")[...])
    bound = voi(fragment_bound(contingency(gt, frags)))
    assert merged["segmentation.fragment_bound_voi"] == pytest.approx(sum(bound))
    assert 0 < sum(bound) <= merged["segmentation.voi_split"] + merged["segmentation.voi_merge"]
    # a missing step is one clear error
    capsys.readouterr()
    assert cli.main(["segment", "agglomerate", "--work-dir", str(tmp_path / "nowhere")]) == 1
    assert "setup" in capsys.readouterr().err


def test_fragment_local_ids_follow_their_first_voxel_not_the_rest_of_the_block(voronoi):
    """A fragment's local id is 1 + the linear index of its first voxel in the write ROI, so changing the data
    in one part of a block leaves the ids of the fragments elsewhere as they were (a count over the block in
    order of first appearance would renumber everything after the change)."""
    from connectomix.segment.fragments import NN_OFFSETS, block_fragments

    affs = syn.degrade(syn.affinities_from_labels(voronoi), seed=2)
    changed = affs.copy()
    changed[:, :, :, 80:] = 0  # a region (the x end of each row) that a new neighbour block could alter
    write = tuple(slice(0, n) for n in voronoi.shape)
    params = seg_params.resolve({})
    a, count, _ = block_fragments(affs, NN_OFFSETS, VOXEL, params, "3d", write, (0, 0, 0))
    b, _, _ = block_fragments(changed, NN_OFFSETS, VOXEL, params, "3d", write, (0, 0, 0))
    first = {}
    for fid in np.unique(a[a > 0]):
        first[fid] = np.flatnonzero((a == fid).ravel())[0]
    assert all(int(fid) == int(fragment_id_base((0, 0, 0))) + int(i) + 1 for fid, i in first.items())
    assert count == len(first)
    kept = [fid for fid in first if np.array_equal(a == fid, b == fid)]
    far = [fid for fid in first if np.nonzero(a == fid)[2].max() < 56]
    assert len(far) >= 10 and set(far) <= set(kept)


def test_lut_digests_change_only_for_blocks_whose_rows_change():
    base = [fragment_id_base((0, 0, k)) for k in range(3)]
    fragments = np.array([base[0] + 5, base[1] + 2, base[1] + 9, base[2] + 1], np.uint64)
    segments = np.array([base[0] + 1, base[0] + 1, base[1] + 2, base[0] + 1], np.uint64)
    a = stitch.lut_digests(fragments, segments)
    assert set(a) == {"z0_y0_x0", "z0_y0_x1", "z0_y0_x2"}
    segments[3] = base[1] + 2  # block x2's fragment now joins another segment
    b = stitch.lut_digests(fragments, segments)
    assert {k for k in a if a[k] != b[k]} == {"z0_y0_x2"}


def test_per_section_fragments_read_only_their_blocks_sections(tmp_path, voronoi):
    """Per-section ('2d') watershed fragments are computed on the write ROI's sections only (the z halo holds
    other sections, which they never look at): the same fragments and face views as on the whole read ROI."""
    from connectomix.segment.fragments import block_fragments

    root, affs = _volume(tmp_path, voronoi)
    s = stitch.setup(root, tmp_path / "w", {}, (8, 48, 48), CHUNKS)
    assert s["mode"] == "2d" and s["halo"][0] > 0
    grid = blockwise.grid_of(s)
    for block in grid:
        read = stitch.fragments_read_roi(block, "2d", "watershed")
        assert read.shape[0] == block.write.shape[0] < block.read.shape[0]
        assert read.shape[1:] == block.read.shape[1:]
        assert stitch.fragments_read_roi(block, "2d", "mutex") == block.read
        assert stitch.fragments_read_roi(block, "3d", "watershed") == block.read
        blockwise.run_blocks(stitch.STAGE, tmp_path / "w", [block.id], "fragments")
        full = block_fragments(affs[(slice(None),) + block.read.slices], s["offsets"], s["voxel_size"], s["params"],
                               "2d", block.write_in_read, block.index)
        written = np.asarray(io.open_array(root, "fragments")[block.write.slices])
        assert np.array_equal(written, full[0])
        with np.load(tmp_path / "w" / "faces" / f"{block.id}.npz") as views:
            for name, view in full[2].items():  # z views of the full read ROI hold no fragment of the write ROI
                assert np.array_equal(views[name], view) if name in views else not view.any()
