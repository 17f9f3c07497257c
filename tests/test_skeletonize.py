"""Skeleton stage: blockwise kimimaro + seamless merge, block invariance, morphology, CLI, ERL evaluation."""

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import io
from connectomix.blocks import BlockGrid, Roi, read_marker
from connectomix.config import defaults
from connectomix.skeletonize import core, params as skparams
from connectomix.skeletonize.merge import merge_pieces
from connectomix.skeletonize.morphology import (
    AXON, DENDRITE, SOMA, compartments, morphology_table, skeletons_to_table, soma_ids, table_to_trees,
)
from connectomix.skeletonize.soma import boundary_distance, elongation, soma_sphere, soma_sphere_radius
from connectomix.skeletonize.trace import crop_to_roi
from connectomix.skeletonize.tree import remove_ticks, smooth
from connectomix.synthetic.skeletons import _paint_capsule, synthetic_neurons

VS = (40.0, 8.0, 8.0)
# TEASAR scaled to these small volumes (neurites ~50-70 nm, somata ~250 nm).
SMALL = {
    "halo": [4, 24, 24],
    "teasar": {"const": 150, "soma_invalidation_const": 150, "soma_detection_threshold": 120,
               "soma_acceptance_threshold": 150},
    "min_segment_voxels": 500,
    "tick_threshold_nm": 300,
    "axon_dendrite": {"min_axon_cable_nm": 300},
}


def _tubes():
    """Touching tubes crossing every kind of block face (z, y, x) and a block corner; a Y branch."""
    labels = np.zeros((32, 128, 128), np.uint64)
    paint = lambda lab, a, b, r: _paint_capsule(labels, lab, np.asarray(a, float), np.asarray(b, float), r, VS)  # noqa
    paint(1, [100, 100, 100], [1200, 900, 950], 60)  # diagonal through the block corner
    paint(2, [600, 50, 900], [700, 1000, 100], 60)  # crosses y and x faces, touches 1
    paint(2, [650, 500, 500], [1200, 900, 200], 50)  # a branch of 2 crossing the z face
    paint(3, [100, 800, 80], [1200, 820, 150], 70)  # runs along z through the z face
    return labels


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="skeletonize.teasar.bogus"):
        skparams.resolve({"teasar": {"bogus": 1}})


def test_crop_cuts_edges_exactly_at_the_face():
    # A straight path along x from voxel 0 to 9; the write ROI owns x in [0, 5).
    vox = np.stack([np.zeros(10), np.zeros(10), np.arange(10.0)], axis=1)
    edges = np.stack([np.arange(9), np.arange(1, 10)], axis=1)
    piece = crop_to_roi(vox, edges, np.ones(10, np.float32), Roi((0, 0, 0), (1, 1, 5)), VS, (0, 0, 0))
    assert len(piece) == 6 and piece.is_tree()
    face = np.flatnonzero(piece.face_axis >= 0)
    assert len(face) == 1 and piece.face_axis[face[0]] == 2 and piece.face_plane[face[0]] == 5
    assert piece.vertices[face[0], 2] == pytest.approx(4.5 * 8)  # half a voxel past the last owned one
    assert piece.cable_length() == pytest.approx(4.5 * 8)


def test_tubes_blockwise_equal_whole_volume_and_are_trees():
    labels = _tubes()
    whole = core.skeletonize_whole(labels, VS, SMALL)
    stats = {}
    grid = BlockGrid(labels.shape, (16, 64, 64), SMALL["halo"])
    by_label, counts = {}, {}
    for block in grid:
        pieces, c = core.skeletonize_block(labels[block.read.slices], block, VS, SMALL, volume_shape=labels.shape)
        core._collect(pieces, c, by_label, counts)
    merged = core.merge_all(by_label, counts, SMALL, stats)
    assert set(merged) == set(whole) == {1, 2, 3}
    # every segment crosses faces and the cut points were fused; tube 1 clips a block at the corner, where its
    # pieces may meet by a component join instead
    assert stats["face_pairs_fused"] >= 5 and stats["components_joined"] <= 1
    assert {k: sum((labels == k).sum() for _ in [0]) for k in merged} == {k: counts[k] for k in merged}
    for label, skel in merged.items():
        assert skel.is_tree(), label
        assert len(by_label[label]) >= 2, label  # really came from several blocks
        ratio = skel.cable_length() / whole[label].cable_length()
        assert abs(ratio - 1) < 0.03, (label, ratio)
        # No duplicate vertices survive the merge.
        assert len(np.unique(np.round(skel.vertices, 3), axis=0)) == len(skel)


def test_dust_is_judged_on_the_whole_component_not_on_a_blocks_piece():
    """kimimaro drops components of dust_threshold voxels or fewer. A block's piece of a larger object, cut off by
    a face inside the volume, is traced all the same (it was dropped, and a thin axon ending just past a z face
    lost its end: -15 % cable on the phantom); a small object wholly inside the block stays dust."""
    labels = np.zeros((32, 64, 64), np.uint64)
    _paint_capsule(labels, 1, np.array([80.0, 256, 256]), np.array([720.0, 256, 256]), 12, VS)  # z 2..18
    _paint_capsule(labels, 2, np.array([240.0, 120, 120]), np.array([240.0, 120, 136]), 12, VS)  # a speck
    params = {**SMALL, "dust_threshold": 100, "min_segment_voxels": 50}
    grid = BlockGrid(labels.shape, (16, 64, 64), params["halo"])
    upper = grid.block((1, 0, 0))
    piece = labels[upper.read.slices]
    assert 0 < (piece == 1).sum() <= 100 < (labels == 1).sum() and 0 < (labels == 2).sum() <= 100
    traced = core.kimimaro_skeletons(piece, VS, params, origin=upper.read.offset, volume_shape=labels.shape)
    assert set(traced) == {1}
    # the same piece as a whole volume of its own (no face inside) is dust
    assert core.kimimaro_skeletons(piece, VS, params) == {}
    whole = core.skeletonize_whole(labels, VS, params)
    merged = core.skeletonize_blockwise(labels, VS, (16, 64, 64), params)
    assert set(whole) == set(merged) == {1}
    assert merged[1].cable_length() == pytest.approx(whole[1].cable_length(), rel=0.03)
    assert whole[1].cable_length() > 550  # z 2..18 at 40 nm: the end past the face is there


@pytest.mark.parametrize("seed", [2, 3])
def test_block_invariance_on_synthetic_neurons(seed):
    """Branching neurites of several touching labels: blockwise-merged vs whole-volume kimimaro (same finalize)."""
    labels, _ = synthetic_neurons((32, 128, 128), VS, n_neurons=4, seed=seed, soma_radius_nm=(60, 70),
                                  neurite_radius_nm=(40, 70), branches=1)
    whole = core.skeletonize_whole(labels, VS, SMALL)
    merged = core.skeletonize_blockwise(labels, VS, (16, 64, 64), SMALL)
    assert set(merged) == set(whole) and merged
    total_w = sum(s.cable_length() for s in whole.values())
    total_b = sum(s.cable_length() for s in merged.values())
    assert abs(total_b / total_w - 1) < 0.03
    for label, skel in merged.items():
        assert skel.is_tree(), label
        assert abs(skel.cable_length() / whole[label].cable_length() - 1) < 0.05, label


# The small phantom of the end-to-end test (tests/helpers.py TINY), twice as deep so that blocks of (16, 64, 64)
# cut it along z, y and x (8 blocks); skeletonized with the default parameters (somata of this size are not
# detected with them; config.yaml detects them, and agrees less: benchmarks/results/skeletonize_throughput.md).
PHANTOM = {"seed": 3, "shape": [32, 128, 128], "n_neurons": 6, "n_synapses": 8, "n_orphan_synapses": 8,
           "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0, "axon_length_nm": 1500.0}
PHANTOM_BLOCKS = (16, 64, 64)


@pytest.fixture(scope="module")
def phantom_skeletons():
    """Phantom gt/labels skeletonized whole (plain kimimaro + the same finalize) and blockwise + merged."""
    import fastremap

    from connectomix.phantom import PhantomParams, generate

    ph = generate(PhantomParams.from_dict(PHANTOM), voxel_size=VS)
    labels = np.asarray(ph.labels)
    ids, counts = fastremap.unique(labels, return_counts=True)
    big = {int(i) for i, c in zip(ids, counts) if i != 0 and c >= defaults("skeletonize")["min_segment_voxels"]}
    whole = {k: s for k, s in core.skeletonize_whole(labels, VS).items() if k in big}
    stats, timings = {}, {}
    grid = BlockGrid(labels.shape, PHANTOM_BLOCKS, defaults("skeletonize")["halo"])
    by_label, voxel_counts = {}, {}
    for block in grid:
        pieces, c = core.skeletonize_block(labels[block.read.slices], block, VS, volume_shape=labels.shape)
        core._collect(pieces, c, by_label, voxel_counts)
    merged = core.merge_all(by_label, voxel_counts, None, stats)
    return ph, labels, big, whole, merged, by_label, stats


def _relative_cable(whole, merged):
    return {k: merged[k].cable_length() / whole[k].cable_length() - 1 for k in sorted(whole)}


def test_block_invariance_on_the_phantom(phantom_skeletons):
    """Issue 5: blockwise-merged vs whole-volume kimimaro on the phantom, every segment above the minimum size.

    Measured here: 64 segments, all one tree; total cable +1.3 %, median |difference| 0.16 %, 95 % of segments
    within 3 %. The worst three (two neurons and a glia, +10 to +23 %) differ by whole branches that TEASAR traces
    in one run and not the other (its root and target order depend on the volume it sees): mirroring the whole
    volume moves as many segments (95 % within 3 % on the default phantom, benchmarks/skeletonize_throughput.py)."""
    ph, labels, big, whole, merged, by_label, stats = phantom_skeletons
    kind = dict(zip(ph.objects["id"].astype(int), ph.objects["kind"]))
    assert set(merged) == set(whole) and len(merged) >= 40
    assert set(merged) <= big and {kind[k] for k in merged} >= {"neuron", "axon", "glia"}
    # real stitching: most segments span several blocks, and their cut points were fused at the faces
    assert sum(len(by_label[k]) >= 2 for k in merged) >= len(merged) // 2
    assert stats["face_pairs_fused"] >= len(merged) // 2
    for label, skel in merged.items():
        assert skel.is_tree(), label
        assert whole[label].is_tree(), label
    rel = _relative_cable(whole, merged)
    total = sum(s.cable_length() for s in merged.values()) / sum(s.cable_length() for s in whole.values())
    assert abs(total - 1) < 0.03, total
    values = np.abs(list(rel.values()))
    assert np.median(values) < 0.01, np.median(values)
    assert np.mean(values < 0.03) >= 0.8, sorted(rel.items(), key=lambda kv: -abs(kv[1]))[:10]
    assert np.mean(values < 0.15) >= 0.95


@pytest.mark.xfail(strict=True, reason="issue 5 acceptance: every segment within 3 % is not met on the phantom "
                                      "(95 % are; TEASAR's branch choices differ between volumes, see above)")
def test_block_invariance_on_the_phantom_every_segment_within_3_percent(phantom_skeletons):
    _, _, _, whole, merged, _, _ = phantom_skeletons
    rel = _relative_cable(whole, merged)
    assert all(abs(r) < 0.03 for r in rel.values()), sorted(rel.items(), key=lambda kv: -abs(kv[1]))[:10]


def test_erl_of_the_phantom_ground_truth_against_itself_is_perfect(phantom_skeletons, tmp_path):
    """ERL scores the segmentation along ground-truth skeletons; the ground truth scored against itself is perfect
    (the labels are looked up on vertices before smoothing: a smoothed vertex of a thin axon can leave it)."""
    from connectomix.evaluate.skeletons import evaluate

    _, labels, _, _, _, _, _ = phantom_skeletons
    root = tmp_path / "volume.zarr"
    io.write_full(root, "gt/labels", labels, (8, 64, 64), VS, is_label=True)
    io.write_full(root, "segmentation", labels, (8, 64, 64), VS, is_label=True)
    metrics, _ = evaluate(root, kinds=("neuron", "axon"))
    assert metrics["gt_skeletons"] >= 40 and metrics["gt_cable_nm"] > 0
    assert metrics["erl_nm"] == pytest.approx(metrics["gt_erl_nm"]) and metrics["erl_fraction"] == pytest.approx(1)
    assert metrics["splits"] == 0 and metrics["merges"] == 0 and metrics["correct_cable_fraction"] == pytest.approx(1)


def test_remove_ticks_keeps_a_tree_connected():
    """Tick removal that fuses two branches at a former branch point must not then remove the fused path
    (kimimaro 5.8's remove_ticks does: it treats the fused path between two branch points as a tick)."""
    # spine a-b-c-d along x (10 nm steps), with ticks at b (30 nm) and c (20 nm, then 40 nm away: a real branch)
    pts, edges = [], []

    def path(start, step, n, attach):
        first = len(pts)
        for i in range(n):
            pts.append(np.asarray(start, float) + (i + 1) * np.asarray(step, float))
            edges.append((attach if i == 0 else len(pts) - 2, len(pts) - 1))
        return first

    pts.append(np.zeros(3))
    path([0, 0, 0], [0, 0, 10], 30, 0)  # vertices 1..30, x = 10..300
    path(pts[10], [0, 10, 0], 3, 10)  # tick at x = 100, 30 nm
    path(pts[20], [0, 10, 0], 2, 20)  # tick at x = 200, 20 nm
    path(pts[20], [0, -10, 0], 40, 20)  # a 400 nm branch at x = 200
    skel = core.Skel(np.asarray(pts), np.asarray(edges), np.ones(len(pts)))
    assert skel.is_tree()
    out = remove_ticks(skel, 50.0)
    assert out.is_tree()
    assert len(out) == len(skel) - 5  # both ticks gone, nothing else
    assert out.cable_length() == pytest.approx(skel.cable_length() - 50)
    # at 350 nm the spine's 100 nm end beyond x = 200 goes; then x = 200 joins the rest into one path: kept
    out2 = remove_ticks(out, 350.0)
    assert out2.is_tree() and len(out2) == len(out) - 10
    assert out2.cable_length() == pytest.approx(out.cable_length() - 100)
    # kimimaro 5.8 cuts this one: removing the 10 nm tick at B1 fuses X-B1-B2 into one 40 nm path between two
    # branch points, which it then takes for the next tick
    pts, edges = [np.zeros(3)], []
    path([0, 0, 0], [0, 0, 10], 50, 0)  # tip A (vertex 0) to X (vertex 50, x = 500)
    x_ = len(pts) - 1
    path(pts[x_], [0, 0, 10], 4, x_)  # X to B2 (x = 540), B1 at x = 520
    b1, b2 = x_ + 2, len(pts) - 1
    path(pts[b2], [0, 0, 10], 50, b2)  # B2 to tip B
    path(pts[x_], [0, 10, 0], 50, x_)  # long branch at X
    path(pts[b2], [0, 10, 0], 50, b2)  # long branch at B2
    path(pts[b1], [0, -10, 0], 1, b1)  # the tick at B1
    skel = core.Skel(np.asarray(pts), np.asarray(edges), np.ones(len(pts)))
    out = remove_ticks(skel, 300.0)
    assert out.is_tree() and len(out) == len(skel) - 1
    assert out.cable_length() == pytest.approx(skel.cable_length() - 10)


def test_smoothing_takes_out_the_section_staircase():
    """A neurite lying across sections, traced as a voxel path that steps between two sections at arbitrary
    places: smoothing brings its cable towards the true length; tips, branch points and long edges stay put."""
    n = 41
    true_z = np.linspace(0, 80, n)  # 80 nm down over 320 nm along x
    jitter = np.random.default_rng(0).uniform(-0.45, 0.45, n)  # where the path search steps between sections
    z = 40.0 * np.rint(true_z / 40 + jitter)
    z[[0, -1]] = true_z[[0, -1]]
    pts = np.stack([z, np.zeros(n), 8.0 * np.arange(n)], axis=1)
    pts = np.vstack([pts, [[z[20], 8, 160], [z[20], 400, 160]]])  # a branch at vertex 20: a short, a long edge
    edges = np.vstack([np.stack([np.arange(n - 1), np.arange(1, n)], 1), [[20, n], [n, n + 1]]])
    skel = core.Skel(pts, edges, np.ones(len(pts)))
    true_length = np.hypot(80, 320)
    cable = lambda v: np.linalg.norm(np.diff(v[:n], axis=0), axis=1).sum()  # noqa: E731
    out = smooth(skel, 4, 100.0)
    assert cable(pts) > 1.3 * true_length  # the staircase adds a third
    assert abs(cable(out.vertices) - true_length) < 0.25 * (cable(pts) - true_length)
    for v in (0, n - 1, 20, n, n + 1):  # tips, the branch point, the end of the 392 nm edge
        assert np.array_equal(out.vertices[v], pts[v]), v
    assert np.array_equal(out.edges, skel.edges) and out.is_tree()
    assert smooth(skel, 0, 100.0) is skel


def test_merge_removes_cycles_and_joins_close_components():
    # A square loop of four pieces and a separate piece 200 nm away.
    sq = np.array([[0, 0, 0], [0, 0, 80], [0, 80, 80], [0, 80, 0]], float)
    loop = core.Skel(sq, [[0, 1], [1, 2], [2, 3], [3, 0]], np.ones(4))
    far = core.Skel([[0, 280, 80], [0, 360, 80]], [[0, 1]], np.ones(2))
    stats = {}
    out = merge_pieces([loop, far], {"join_distance_nm": 250, "tick_threshold_nm": 0}, stats)
    assert out.is_tree() and stats["cycle_edges_removed"] == 1 and stats["components_joined"] == 1
    out2 = merge_pieces([loop, far], {"join_distance_nm": 150, "tick_threshold_nm": 0})
    assert out2.n_components() == 2  # beyond the limit: not joined


def test_soma_is_found_and_split_into_axon_and_dendrites():
    labels = np.zeros((32, 128, 128), np.uint64)
    soma = np.array([640.0, 512, 512])
    _paint_capsule(labels, 7, soma, soma, 180, VS)
    for end, r in (([640, 500, 1010], 80), ([640, 1010, 520], 80), ([640, 10, 500], 40)):  # the thin one: axon
        _paint_capsule(labels, 7, soma, np.asarray(end, float), r, VS)
    p = {**SMALL, "teasar": {**SMALL["teasar"], "soma_invalidation_scale": 1.0, "soma_invalidation_const": 50}}
    skels = core.skeletonize_blockwise(labels, VS, (16, 64, 64), p)
    table = skeletons_to_table(skels)
    (skel, parent), = table_to_trees(table).values()
    assert np.linalg.norm(skel.vertices[0] - soma) < 100 and skel.radii[0] > 150  # root at the soma centre
    comp, method = compartments(skel, parent, p)
    assert method == "radius" and comp[0] == SOMA
    axon_y = skel.vertices[comp == AXON, 1]
    assert len(axon_y) and axon_y.max() < soma[1]  # the thin neurite (towards y = 0) is the axon
    morph = morphology_table(table_to_trees(table), p)
    row = morph.iloc[0]
    assert row["has_soma"] and abs(row["soma_y_nm"] - soma[1]) < 100 and row["soma_radius_nm"] > 150
    whole = core.skeletonize_whole(labels, VS, p)[7]
    assert row["tips"] == (whole.degrees() == 1).sum() >= 3  # three neurites (and what kimimaro adds alike)
    assert abs(row["cable_length_nm"] / whole.cable_length() - 1) < 0.03
    assert row["axon_cable_nm"] > 0 and row["dendrite_cable_nm"] > row["axon_cable_nm"]
    assert row["cable_length_nm"] == pytest.approx(skel.cable_length())
    # Polarity hook: presynaptic sites on a dendrite make it the axon.
    from connectomix.skeletonize.morphology import _subtree_of

    top = _subtree_of(parent, 0)
    one = np.flatnonzero(top == top[np.flatnonzero(comp == DENDRITE)[0]])  # the vertices of one dendrite
    dend = skel.vertices[one[-3:]]
    syn = pd.DataFrame({"z_nm": dend[:, 0], "y_nm": dend[:, 1], "x_nm": dend[:, 2], "kind": ["pre"] * 3})
    comp2, method2 = compartments(skel, parent, {**p, "axon_dendrite": {"method": "synapses"}}, syn)
    assert method2 == "synapses" and (comp2 == AXON).sum() > 0
    assert not (comp2 == AXON)[comp == AXON].any()  # the old axon is now a dendrite
    assert (comp2 == AXON)[one].all() and (comp2 == DENDRITE).sum() > 0


def _volume(tmp_path, labels, name="segmentation"):
    root = tmp_path / "volume.zarr"
    io.write_full(root, name, labels, (8, 64, 64), VS, is_label=True)
    return root


def _cli_setup(tmp_path, root, work="skeletonize"):
    from connectomix import cli

    assert cli.main(["skeletonize", "setup", "--volume", str(root), "--work-dir", str(tmp_path / work),
                     "--params", json.dumps(SMALL), "--block-shape", "16", "64", "64", "--chunk-shape", "8", "64",
                     "64"]) == 0
    return tmp_path / work


def test_cli_blocks_merge_morphology(tmp_path, capsys):
    from connectomix import cli

    labels = _tubes()
    root = _volume(tmp_path, labels)
    spec = json.dumps(SMALL)
    work = _cli_setup(tmp_path, root)
    grid = BlockGrid(labels.shape, (16, 64, 64), SMALL["halo"], (8, 64, 64))
    for block_id in grid.ids():
        assert cli.main(["skeletonize", "block", "--work-dir", str(work), "--blocks", block_id]) == 0
        assert read_marker(tmp_path / "blocks" / "skeletonize" / f"{block_id}.json")["block"] == block_id
    out = tmp_path / "skeletons.parquet"
    assert cli.main(["skeletonize", "finish", "--work-dir", str(work), "--skeletons", str(out),
                     "--summary", str(tmp_path / "merge.json")]) == 0
    table = pd.read_parquet(out)
    assert sorted(table["id"].unique()) == [1, 2, 3]
    assert (table.groupby("id")["parent"].apply(lambda p: (p < 0).sum()) == 1).all()  # one root each
    summary = json.loads((tmp_path / "merge.json").read_text())
    assert summary["segments"] == 3 and summary["segments_not_one_tree"] == 0
    whole = core.skeletonize_whole(labels, VS, SMALL)
    trees = table_to_trees(table)
    for label, (skel, _) in trees.items():
        assert abs(skel.cable_length() / whole[label].cable_length() - 1) < 0.03
    assert cli.main(["skeletonize", "morphology", "--skeletons", str(out), "--params", spec,
                     "--out", str(tmp_path / "morphology.parquet")]) == 0
    morph = pd.read_parquet(tmp_path / "morphology.parquet")
    assert list(morph["id"]) == [1, 2, 3]
    assert np.allclose(morph["cable_length_nm"], [trees[i][0].cable_length() for i in (1, 2, 3)])
    assert (morph["branch_points"] >= 0).all() and morph.loc[morph["id"] == 2, "branch_points"].item() >= 1
    ext = [np.ptp(trees[i][0].vertices, axis=0) for i in (1, 2, 3)]
    assert np.allclose(morph[["extent_z_nm", "extent_y_nm", "extent_x_nm"]].to_numpy(), ext)
    assert morph.loc[morph["id"] == 3, "extent_z_nm"].item() > 900  # tube 3 runs along z
    # A missing block is a clear error.
    (work / "pieces" / "z0_y0_x0.npz").unlink()
    assert cli.main(["skeletonize", "finish", "--work-dir", str(work), "--skeletons", str(out),
                     "--summary", str(tmp_path / "merge.json")]) == 1
    assert "z0_y0_x0" in capsys.readouterr().err


def test_cli_block_batch_writes_the_same_pieces_as_single_blocks(tmp_path, capsys):
    """`skeletonize block --blocks A B ...` (one Snakemake batch job) = one call per block."""
    from connectomix import cli

    labels = _tubes()
    root = _volume(tmp_path, labels)
    one, batch = _cli_setup(tmp_path, root, "one"), _cli_setup(tmp_path, root, "batch")
    grid = BlockGrid(labels.shape, (16, 64, 64), SMALL["halo"], (8, 64, 64))
    for block_id in grid.ids():
        assert cli.main(["skeletonize", "block", "--work-dir", str(one), "--blocks", block_id]) == 0
    assert cli.main(["skeletonize", "block", "--work-dir", str(batch), "--blocks", *grid.ids()]) == 0
    for block_id in grid.ids():
        assert read_marker(tmp_path / "blocks" / "skeletonize" / f"{block_id}.json")["block"] == block_id
        a, b = np.load(one / "pieces" / f"{block_id}.npz"), np.load(batch / "pieces" / f"{block_id}.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), (block_id, key)
    capsys.readouterr()
    # a block outside the grid is an error before any work
    assert cli.main(["skeletonize", "block", "--work-dir", str(batch), "--blocks", grid.ids()[0], "z9_y0_x0"]) == 1
    assert "outside the grid" in capsys.readouterr().err


def test_erl_metrics_by_hand():
    from connectomix.evaluate.skeletons import run_length_metrics

    line = lambda n: core.Skel(np.stack([np.zeros(n), np.zeros(n), 10.0 * np.arange(n)], 1),  # noqa: E731
                               np.stack([np.arange(n - 1), np.arange(1, n)], 1), np.ones(n))
    gt = {1: line(11), 2: line(11)}  # two 100 nm skeletons
    perfect = run_length_metrics(gt, {1: np.full(11, 5), 2: np.full(11, 6)})
    assert perfect["erl_nm"] == pytest.approx(100) == perfect["gt_erl_nm"]
    assert perfect["splits"] == 0 and perfect["merges"] == 0
    split = run_length_metrics(gt, {1: np.r_[np.full(6, 5), np.full(5, 7)], 2: np.full(11, 6)})
    # Skeleton 1 split 50 + 40 (the edge across the split is wrong): (50^2 + 40^2 + 100^2) / 200.
    assert split["erl_nm"] == pytest.approx((50**2 + 40**2 + 100**2) / 200) and split["splits"] == 1
    merged = run_length_metrics(gt, {1: np.full(11, 5), 2: np.full(11, 5)})
    assert merged["erl_nm"] == 0 and merged["merges"] == 1


def test_evaluate_cli_perfect_and_split_segmentation(tmp_path):
    from connectomix import cli

    labels = _tubes()
    root = tmp_path / "volume.zarr"
    io.write_full(root, "gt/labels", labels, (8, 64, 64), VS, is_label=True)
    io.write_full(root, "segmentation", labels * 10, (8, 64, 64), VS, is_label=True)  # same objects, new ids
    out = tmp_path / "eval" / "skeletons.json"
    spec = json.dumps(SMALL)
    assert cli.main(["evaluate", "skeletons", "--volume", str(root), "--params", spec, "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["stage"] == "skeletons"
    assert m["metrics"]["erl_nm"] == pytest.approx(m["metrics"]["gt_erl_nm"]) and m["metrics"]["gt_erl_nm"] > 500
    assert m["metrics"]["splits"] == 0 and m["metrics"]["merges"] == 0
    split = labels * 10
    split[:, :, 64:][split[:, :, 64:] > 0] += 1  # every object cut at x = 64
    merged = np.where(labels == 3, 1, labels)  # 3 merged into 1
    io.write_full(root, "segmentation", np.maximum(split, 0), (8, 64, 64), VS, is_label=True)
    assert cli.main(["evaluate", "skeletons", "--volume", str(root), "--params", spec, "--out", str(out)]) == 0
    ms = json.loads(out.read_text())["metrics"]
    assert ms["splits"] >= 2 and ms["erl_nm"] < 0.8 * ms["gt_erl_nm"] and ms["merges"] == 0
    io.write_full(root, "segmentation", merged, (8, 64, 64), VS, is_label=True)
    assert cli.main(["evaluate", "skeletons", "--volume", str(root), "--params", spec, "--out", str(out)]) == 0
    mm = json.loads(out.read_text())["metrics"]
    assert mm["merges"] == 1 and mm["erl_nm"] < m["metrics"]["erl_nm"]


# --- soma bodies (morphology's soma position, radius and volume) ---------------------------------------------------

def _neuron_with_neurites(shape=(24, 160, 160), centre=(480.0, 640.0, 640.0), radius=250.0):
    """A sphere (label 1) with three thick neurites leaving it, inside a volume of another label (2)."""
    labels = np.full(shape, 2, np.uint64)
    c = np.asarray(centre)
    _paint_capsule(labels, 1, c, c, radius, VS)
    for end in ([480, 640, 1270], [480, 50, 640], [900, 1100, 300]):
        _paint_capsule(labels, 1, c, np.asarray(end, float), 70.0, VS)
    return labels


def test_soma_body_is_the_cell_body_without_its_neurites():
    from connectomix.skeletonize.soma import soma_body

    labels = _neuron_with_neurites()
    centre_vox = np.array([480.0, 640.0, 640.0]) / VS
    mask = labels == 1
    # start from a point off the centre, as a skeleton's widest point can be
    body = soma_body(mask, VS, centre_vox + [0, 3, -2], 250.0, 0.6)
    assert np.linalg.norm((body["centroid"] - centre_vox) * VS) < 10  # nm
    assert body["radius_nm"] == pytest.approx(250, rel=0.03)
    sphere = 4 / 3 * np.pi * 250**3
    assert mask.sum() * np.prod(VS) > 1.25 * sphere  # the neurites add a quarter ...
    assert body["volume_nm3"] < 1.05 * sphere  # ... and are left out
    assert body["inscribed_radius_nm"] == pytest.approx(250, abs=40)
    assert not body["touches"].any()
    assert soma_body(np.zeros_like(mask), VS, centre_vox, 250.0, 0.6) is None


def test_soma_body_opens_harder_when_a_merged_neighbour_pulls_its_centroid():
    """A segmentation merge: a neighbouring cell (r 200 nm) joined to the soma (r 250 nm) by a neck of radius 165 nm,
    wider than the 0.6 x 250 nm opening ball. Opened once, the body holds both and its centroid sits ~150 nm
    towards the neighbour; with max_centroid_shift it is opened again, harder, and is the soma alone."""
    from connectomix.skeletonize.soma import soma_body

    labels = np.full((24, 160, 160), 2, np.uint64)
    c, n = np.array([480.0, 640.0, 640.0]), np.array([480.0, 640.0, 1070.0])
    _paint_capsule(labels, 1, c, c, 250.0, VS)
    _paint_capsule(labels, 1, n, n, 200.0, VS)
    _paint_capsule(labels, 1, c, n, 165.0, VS)
    mask, centre_vox = labels == 1, c / VS
    once = soma_body(mask, VS, centre_vox, 250.0, 0.6, max_centroid_shift=None)
    assert np.linalg.norm((once["centroid"] - centre_vox) * VS) > 100
    body = soma_body(mask, VS, centre_vox, 250.0, 0.6, max_centroid_shift=0.5)
    assert np.linalg.norm((body["centroid"] - centre_vox) * VS) < 15
    assert body["radius_nm"] == pytest.approx(250, rel=0.05)
    # a round soma with thin neurites is opened once: the same body either way
    plain = _neuron_with_neurites() == 1
    assert soma_body(plain, VS, centre_vox, 250.0, 0.6, 0.5)["volume_nm3"] == \
        soma_body(plain, VS, centre_vox, 250.0, 0.6, None)["volume_nm3"]


def test_soma_bodies_read_from_the_pyramid_with_offsets_and_flag_cut_somata(tmp_path):
    from connectomix.skeletonize.soma import read_plan, soma_bodies

    labels = _neuron_with_neurites(shape=(24, 256, 256))
    _paint_capsule(labels, 3, np.array([100.0, 1700, 1700]), np.array([100.0, 1700, 1700]), 250.0, VS)  # cut by z=0
    offset = (1000.0, -400.0, 80.0)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "segmentation", labels, (8, 64, 64), VS, offset, is_label=True)
    io.build_pyramid(root, "segmentation", 3, (1, 2, 2))
    # voxels of at most 250 / 12 nm: level 1 (16 nm in-plane; z stays 40 nm); 250 / 8: level 2 with stride 1
    assert read_plan(root, "segmentation", 250.0, 12)[0] == 1
    level, stride = read_plan(root, "segmentation", 250.0, 6)
    assert level == 2 and list(stride) == [1, 1, 1]
    somata = pd.DataFrame({"id": np.array([1, 3], np.uint64), "soma_z_nm": [480.0 + 40, 100.0],
                           "soma_y_nm": [640.0 - 24, 1700.0], "soma_x_nm": [640.0 + 16, 1700.0],
                           "soma_radius_nm": [230.0, 200.0]})
    for axis, shift in zip("zyx", offset):
        somata[f"soma_{axis}_nm"] += shift
    params = defaults("skeletonize")["soma_body"]
    bodies = soma_bodies(root, "segmentation", somata, params).set_index("id")
    whole = bodies.loc[1]
    centre = np.array([480.0, 640.0, 640.0]) + offset
    assert np.linalg.norm(whole[["soma_z_nm", "soma_y_nm", "soma_x_nm"]].to_numpy(float) - centre) < 15
    assert whole["soma_radius_nm"] == pytest.approx(250, rel=0.04) and not whole["soma_truncated"]
    cut = bodies.loc[3]
    assert cut["soma_truncated"] and cut["soma_radius_nm"] < 0.95 * 250  # 78 % of it is inside: a lower bound
    assert cut["soma_volume_nm3"] == pytest.approx(4 / 3 * np.pi * cut["soma_radius_nm"] ** 3)


def test_cli_morphology_measures_soma_bodies_on_the_volume(tmp_path):
    from connectomix import cli

    labels = _neuron_with_neurites()
    root = _volume(tmp_path, labels)
    spec = json.dumps(SMALL)
    table = skeletons_to_table(core.skeletonize_whole(labels, VS, SMALL))
    table.to_parquet(tmp_path / "skeletons.parquet")
    out = {}
    for name, extra in (("skeleton", []), ("body", ["--volume", str(root)])):
        assert cli.main(["skeletonize", "morphology", "--skeletons", str(tmp_path / "skeletons.parquet"),
                         "--params", spec, "--out", str(tmp_path / f"{name}.parquet"),
                         "--summary", str(tmp_path / f"{name}.json")] + extra) == 0
        morph = pd.read_parquet(tmp_path / f"{name}.parquet").set_index("id")
        assert morph.loc[1, "has_soma"]
        out[name] = morph.loc[1]
    assert np.isnan(out["skeleton"]["soma_volume_nm3"])
    assert out["skeleton"]["soma_radius_nm"] == out["skeleton"]["soma_inscribed_radius_nm"]
    body = out["body"]
    assert body["soma_radius_nm"] == pytest.approx(250, rel=0.03) and body["soma_volume_nm3"] > 0
    assert body["soma_inscribed_radius_nm"] == out["skeleton"]["soma_inscribed_radius_nm"]
    error = lambda row: np.linalg.norm(row[["soma_z_nm", "soma_y_nm", "soma_x_nm"]].to_numpy(float)  # noqa: E731
                                       - [480.0, 640.0, 640.0])
    assert error(body) < 10
    summary = json.loads((tmp_path / "body.json").read_text())
    assert summary["soma_bodies"] == summary["with_soma"] >= 1 and "segmentation" in summary["provenance"]["inputs"]


def test_a_segment_that_fills_the_volume_is_skeletonized_without_a_soma(tmp_path):
    """One segment everywhere (a blank volume, or a run that merged widely): it has no boundary in view, so no
    measurable width; the stage must not call it a soma with an infinite radius and die in morphology."""
    from connectomix import cli

    labels = np.full((24, 192, 192), 7, np.uint64)
    root = _volume(tmp_path, labels)
    distance = boundary_distance(labels, VS)
    assert np.isfinite(distance).all() and distance.max() == 0
    work = str(tmp_path / "skeletonize")
    pd.DataFrame({"id": np.array([7], np.uint64), "voxels": [labels.size]}).to_parquet(tmp_path / "segments.parquet")
    assert cli.main(["skeletonize", "setup", "--volume", str(root), "--work-dir", work, "--params", "{}",
                     "--block-shape", "24", "128", "128", "--chunk-shape", "8", "64", "64",
                     "--array", "segmentation"]) == 0
    assert cli.main(["skeletonize", "somata", "--work-dir", work]) == 0
    assert len(pd.read_parquet(tmp_path / "skeletonize" / "somata.parquet")) == 0
    blocks = BlockGrid(labels.shape, (24, 128, 128), (0, 0, 0), (8, 64, 64)).ids()
    assert cli.main(["skeletonize", "block", "--work-dir", work, "--blocks", *blocks]) == 0
    assert cli.main(["skeletonize", "finish", "--work-dir", work, "--segments", str(tmp_path / "segments.parquet"),
                     "--skeletons", str(tmp_path / "skeletons.parquet"), "--summary", str(tmp_path / "s.json")]) == 0
    skeletons = pd.read_parquet(tmp_path / "skeletons.parquet")
    assert len(skeletons) > 1 and np.isfinite(skeletons["radius_nm"]).all() and not skeletons["soma"].any()
    assert cli.main(["skeletonize", "morphology", "--skeletons", str(tmp_path / "skeletons.parquet"), "--params",
                     "{}", "--volume", str(root), "--array", "segmentation", "--out", str(tmp_path / "m.parquet"),
                     "--summary", str(tmp_path / "m.json")]) == 0
    morphology = pd.read_parquet(tmp_path / "m.parquet")
    assert list(morphology["id"]) == [7] and not morphology["has_soma"].any()


# --- somata found once for the volume, cleared alike in every block -------------------------------------------------

PHANTOM_SOMATA = {"teasar": {"soma_detection_threshold": 100, "soma_acceptance_threshold": 120,
                             "soma_invalidation_const": 0}}  # this phantom's somata (radius ~120-170 nm) are found


def _ball_and_tubes():
    """A ball (1), a tube a little wider than the ball (2) and a thick tube (3), and the acceptance threshold T
    that puts the ball's largest boundary distance at 0.97 T; with the distances found."""
    labels = np.zeros((24, 224, 256), np.uint64)
    _paint_capsule(labels, 1, np.array([480.0, 300, 300]), np.array([480.0, 300, 300]), 200, VS)
    _paint_capsule(labels, 2, np.array([480.0, 800, 200]), np.array([480.0, 800, 1800]), 225, VS)
    _paint_capsule(labels, 3, np.array([480.0, 1400, 200]), np.array([480.0, 1400, 1800]), 330, VS)
    off = {"soma_shape": {"test_from": 1.0, "test_to": 1.0}}
    distance = {k: d for k, (_, d) in core.find_somata(labels, VS, {**off, "teasar": {
        "soma_acceptance_threshold": 50}}).items()}
    return labels, distance[1] / 0.97, distance


def test_somata_near_the_threshold_count_only_when_round():
    labels, threshold, distance = _ball_and_tubes()
    assert threshold < distance[2] <= 1.2 * threshold < distance[3]  # the thin tube lies in the tested band
    p = {"teasar": {"soma_acceptance_threshold": threshold}}
    import edt

    dbf = edt.edt(labels, anisotropy=VS, black_border=False)
    shape = elongation(labels, dbf, VS, core.find_somata(labels, VS, {**p, "soma_shape": {"test_from": 0.5,
                                                                                               "test_to": 1.0}}))
    assert shape[1] < 0.5 and shape[2] > 2  # a ball's ridge is a blob at its centre; a tube's runs along it
    assert set(core.find_somata(labels, VS, p)) == {1, 3}  # the ball below T is round, the tube above is not
    off = {**p, "soma_shape": {"test_from": 1.0, "test_to": 1.0}}
    assert set(core.find_somata(labels, VS, off)) == {2, 3}  # T alone


def test_the_soma_decision_travels_with_the_skeletons():
    """A segment has a soma when find_somata says so, whatever its radius: skeletons.parquet marks the soma
    node and morphology (and the SWC compartments) follow the mark, not the radius rule."""
    labels, threshold, _ = _ball_and_tubes()
    p = {"teasar": {"soma_acceptance_threshold": threshold, "soma_invalidation_const": 0}, "tick_threshold_nm": 0}
    somata = core.find_somata(labels, VS, p)
    table = skeletons_to_table(core.skeletonize_whole(labels, VS, p), soma_ids=somata)
    marked = table[table["soma"]]
    assert sorted(marked["id"].tolist()) == [1, 3] and (marked["node"] == 0).all()
    morph = morphology_table(table_to_trees(table), p, soma_ids=soma_ids(table)).set_index("id")
    assert morph["has_soma"].to_dict() == {1: True, 2: False, 3: True}
    assert morph.loc[1, "soma_radius_nm"] < threshold  # below T, and a soma all the same
    legacy = morphology_table(table_to_trees(table.drop(columns="soma")), p).set_index("id")
    assert legacy["has_soma"].to_dict() == {1: False, 2: True, 3: True}  # without the mark: the radius rule


def test_find_mask_and_attach_somata():
    labels = _neuron_with_neurites()
    somata = core.find_somata(labels, VS, SMALL)
    assert set(somata) == {1, 2}  # the neuron, and the surrounding label (wide everywhere)
    centre, distance = somata[1]
    assert np.linalg.norm((np.asarray(centre) - np.array([480.0, 640.0, 640.0]) / VS) * VS) <= 8
    assert distance == pytest.approx(250, abs=10)
    owned = np.zeros(labels.shape, bool)
    owned[:, :, :60] = True  # only maxima in these voxels count
    assert 1 not in core.find_somata(labels, VS, SMALL, maxima_in=owned)
    # the sphere is cleared of the neuron only; the neurites outside it stay
    radius = soma_sphere_radius(distance, SMALL)
    teasar = core.resolve(SMALL)["teasar"]
    assert radius == pytest.approx(distance * teasar["soma_invalidation_scale"] + teasar["soma_invalidation_const"])
    masked = core.mask_somata(labels, (0, 0, 0), VS, {1: somata[1]}, SMALL)
    grid = np.stack(np.meshgrid(*[np.arange(n) * v for n, v in zip(labels.shape, VS)], indexing="ij"), -1)
    inside = np.linalg.norm(grid - np.asarray(centre) * VS, axis=-1) <= radius
    assert not (masked[inside] == 1).any() and (masked[~inside] == labels[~inside]).all()
    assert (masked[inside & (labels == 2)] == 2).all() and (masked == 1).sum() > 0
    # block coordinates: the same sphere cut out of a crop; a crop it does not reach is returned as it is
    crop = labels[8:, 60:, 60:]
    assert np.array_equal(core.mask_somata(crop, (8, 60, 60), VS, {1: somata[1]}, SMALL), masked[8:, 60:, 60:])
    far = labels[:, :10, :10]
    assert core.mask_somata(far, (0, 0, 0), VS, {1: somata[1]}, SMALL) is far
    # each neurite starting at the sphere is joined to the centre once; a piece farther out is not
    stub = core.Skel(np.array([[0, 0, 300.0], [0, 0, 500], [0, 0, 900], [0, 0, 1100]]), np.array([[0, 1], [2, 3]]),
                     np.ones(4, np.float32))
    out = core.attach_soma(stub, np.zeros(3), 250.0, 290.0, 80.0)
    assert len(out) == 5 and out.radii[-1] == 250 and {tuple(e) for e in out.edges[2:]} == {(4, 0)}


def test_blockwise_somata_are_the_whole_volumes(phantom_skeletons):
    """A soma cut by block faces is the same soma in every block: blockwise and whole-volume skeletons put it at
    the same place with the same radius, and its neurites (traced from the cleared sphere outwards) agree."""
    ph, labels, *_ = phantom_skeletons
    kind = dict(zip(ph.objects["id"].astype(int), ph.objects["kind"]))
    somata = core.find_somata(labels, VS, PHANTOM_SOMATA)
    neurons = [k for k in somata if kind[k] == "neuron"]
    assert len(neurons) >= 4
    whole = core.skeletonize_whole(labels, VS, PHANTOM_SOMATA)
    blockwise = core.skeletonize_blockwise(labels, VS, PHANTOM_BLOCKS, PHANTOM_SOMATA)
    grid = BlockGrid(labels.shape, PHANTOM_BLOCKS, defaults("skeletonize")["halo"])
    cut = [k for k in neurons if len({b.id for b in grid if (labels[b.write.slices] == k).any()}) > 1]
    assert len(cut) >= 3  # most neurons span several blocks
    p = core.resolve(PHANTOM_SOMATA)
    rel = []
    for k in neurons:
        w, b = whole[k], blockwise[k]
        sw, sb = soma_sphere(w, p, True), soma_sphere(b, p, True)
        assert sw is not None and sb is not None and sw[1] == sb[1]
        assert np.allclose(w.vertices[sw[0]], b.vertices[sb[0]]) and w.radii[sw[0]] == b.radii[sb[0]]
        assert w.is_tree() and b.is_tree()
        rel.append(b.cable_length() / w.cable_length() - 1)
    rel = np.abs(rel)
    assert np.median(rel) < 0.01 and rel.max() < 0.1, rel


def test_the_shape_test_judges_a_segment_at_its_widest_point_in_every_block(tmp_path):
    """Blockwise, a segment is judged where it is widest over all blocks, as on the whole volume: a round blob
    (in the tested band) joined by a long thin neck to a wider tube (in the band, not round) is no soma, though the
    blocks that see only the blob would call it one."""
    from connectomix.skeletonize.soma import find_somata_in_volume

    _, threshold, distance = _ball_and_tubes()
    labels = np.zeros((24, 96, 384), np.uint64)
    for a, b, r in (((480, 300, 300), (480, 300, 300), 200), ((480, 300, 300), (480, 300, 1900), 40),
                    ((480, 300, 1900), (480, 300, 2900), 225)):
        _paint_capsule(labels, 5, np.array(a, float), np.array(b, float), r, VS)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "segmentation", labels, (8, 64, 64), VS, is_label=True)
    io.build_pyramid(root, "segmentation", 3, (1, 2, 2))
    p = {"teasar": {"soma_acceptance_threshold": threshold}}
    whole = find_somata_in_volume(root, "segmentation", p)
    blocks = find_somata_in_volume(root, "segmentation", p, block_voxels=8)  # blob and tube in far apart blocks
    pd.testing.assert_frame_equal(whole, blocks)
    assert len(whole) == 0
    blob = labels.copy()
    blob[:, :, 130:] = 0  # the blob alone is a soma
    assert set(core.find_somata(blob, VS, p)) == {5}


def test_somata_of_a_volume_blockwise_on_its_pyramid(tmp_path, phantom_skeletons):
    from connectomix.skeletonize.soma import find_somata_in_volume, read_plan, somata_dict, somata_meeting

    _, labels, *_ = phantom_skeletons
    root = tmp_path / "volume.zarr"
    io.write_full(root, "segmentation", labels, (8, 64, 64), VS, is_label=True)
    io.build_pyramid(root, "segmentation", 3, (1, 2, 2))
    level, stride = read_plan(root, "segmentation", 120.0, 4.0)
    assert level == 1 and list(stride) == [1, 1, 1]  # 40 x 16 x 16 nm: at most 30 nm in-plane
    one = find_somata_in_volume(root, "segmentation", PHANTOM_SOMATA)
    many = find_somata_in_volume(root, "segmentation", PHANTOM_SOMATA, block_voxels=16)  # 2 x 4 x 4 blocks
    pd.testing.assert_frame_equal(one, many)
    full = core.find_somata(labels, VS, PHANTOM_SOMATA)
    found = somata_dict(one)
    assert set(found) - set(full) <= set() and len(set(full) - set(found)) <= 1  # coarser voxels, same somata
    for k in set(found) & set(full):
        assert np.linalg.norm((np.subtract(found[k][0], full[k][0])) * VS) < 60
        assert found[k][1] == pytest.approx(full[k][1], abs=30)
    assert np.allclose(one["sphere_nm"], [soma_sphere_radius(d, PHANTOM_SOMATA) for d in one["distance_nm"]])
    k = int(one["id"].iloc[0])
    centre = one[["z", "y", "x"]].to_numpy()[0]
    assert k in somata_meeting(one, centre, (1, 1, 1), VS)["id"].tolist()
    assert k not in somata_meeting(one, centre + 40, (1, 1, 1), VS)["id"].tolist()
