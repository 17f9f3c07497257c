"""Segmentation metrics: equal to scikit-image, contingency accumulation, threshold sweep, worst objects, merge."""

import json

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from connectomix.evaluate import merge, write_stage_metrics
from connectomix.evaluate.segmentation import (
    adapted_rand, contingency, fragment_bound, metrics, per_section, plot_sweep, threshold_sweep, voi,
    worst_objects,
)
from connectomix.segment.agglomerate import apply_lut, hierarchical, lookup_table


def _pair(seed, shape=(8, 40, 40)):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 12, shape).astype(np.uint64)
    gt = np.repeat(gt[:, ::4], 4, axis=1)  # some spatial structure, some zeros
    seg = (gt * 3 + (rng.random(shape) < 0.2) * rng.integers(1, 5, shape)).astype(np.uint64)
    return gt, seg


@pytest.mark.parametrize("ignore", [(0,), ()])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_scikit_image(seed, ignore):
    gt, seg = _pair(seed)
    m = metrics(gt, seg, ignore=ignore)
    split, merge_ = variation_of_information(gt, seg, ignore_labels=ignore)
    are, prec, rec = adapted_rand_error(gt, seg, ignore_labels=ignore)
    assert m["voi_split"] == pytest.approx(split, abs=1e-9)
    assert m["voi_merge"] == pytest.approx(merge_, abs=1e-9)
    assert m["arand"] == pytest.approx(are, abs=1e-12)
    assert m["rand_precision"] == pytest.approx(prec) and m["rand_recall"] == pytest.approx(rec)
    # swapped roles: split and merge swap
    m2 = metrics(seg + np.uint64(1), gt, ignore=())
    s2, g2 = variation_of_information(seg + np.uint64(1), gt)
    assert (m2["voi_split"], m2["voi_merge"]) == pytest.approx((s2, g2))


def test_fragment_bound_is_the_majority_overlap_agglomeration():
    gt = np.zeros((2, 12, 12), np.uint64)
    gt[:, :, :6], gt[:, :, 6:] = 1, 2
    gt[:, :, 6] = 0  # an ignored border column
    frags = np.arange(1, 2 * 12 * 12 + 1, dtype=np.uint64).reshape(gt.shape)  # one fragment per voxel
    assert voi(fragment_bound(contingency(gt, frags))) == (0.0, 0.0)  # over-segmented only: no error left
    frags = np.where(gt == 2, 20, 10).astype(np.uint64)
    frags[:, :, 6:8] = 10  # fragment 10 takes two columns of object 2 (the ignored one does not count)
    frags[:, 0, 3:] = 30  # fragment 30: 3 voxels of object 1 and 5 of object 2 per section (and 1 ignored)
    best = np.select([frags == 10, frags == 20, frags == 30], [1, 2, 2]).astype(np.uint64)
    expected = variation_of_information(gt, best, ignore_labels=(0,))
    assert voi(fragment_bound(contingency(gt, frags))) == pytest.approx(expected, abs=1e-12)
    assert expected[0] > 0 and expected[1] > 0
    # a tie goes to the lower ground-truth id
    gt2 = np.array([[[1, 1, 2, 2]]], np.uint64)
    table = fragment_bound(contingency(gt2, np.ones_like(gt2)))
    assert set(table.seg.tolist()) == {1}


def test_contingency_slabs_equal_whole_and_large_ids():
    gt, seg = _pair(3)
    seg = seg + np.uint64(2**62)  # fragment-style ids beyond what a dense table could hold
    whole = contingency(gt, seg, slab=10**6)
    slabs = contingency(gt, seg, slab=3)
    for a, b in zip((whole.gt, whole.seg, whole.count), (slabs.gt, slabs.seg, slabs.count)):
        assert np.array_equal(a, b)
    assert voi(whole) == pytest.approx(voi(slabs))
    assert adapted_rand(whole) == pytest.approx(adapted_rand(slabs))


def test_perfect_and_worst_objects():
    gt = np.zeros((1, 10, 10), np.uint64)
    gt[0, :, :5], gt[0, :, 5:] = 1, 2
    assert metrics(gt, gt)["voi"] == 0 and metrics(gt, gt)["arand"] == 0
    seg = gt.copy()
    seg[0, :5, :5] = 7  # gt 1 split in two
    seg[0, :, 5:] = 1  # gt 2 takes seg id 1 ... and gt 1's lower half too: a merge
    worst = worst_objects(contingency(gt, seg))
    assert worst["splits"][0]["gt_id"] == 1 and worst["splits"][0]["segments"] == 2
    assert worst["merges"][0]["segment_id"] == 1 and worst["merges"][0]["gt_objects"] == 2


def test_threshold_sweep_equals_relabelled_segmentations(tmp_path):
    from connectomix.synthetic import segment as syn
    from connectomix.segment import params as seg_params
    from connectomix.segment.fragments import watershed_fragments
    from connectomix.segment.rag import volume_rag

    gt = syn.voronoi_labels((8, 64, 64), 15, seed=2, anisotropy=(40, 8, 8))
    affs = syn.degrade(syn.affinities_from_labels(gt), seed=3)
    frags = watershed_fragments(affs, syn.NN_OFFSETS, (40, 8, 8), seg_params.resolve({}), "2d").astype(np.uint64)
    nodes, merges = hierarchical(volume_rag(frags, affs, syn.NN_OFFSETS), 1.0)
    rows = threshold_sweep(gt, frags, nodes, merges, [0.2, 0.5, 0.8])
    for row in rows:
        seg = apply_lut(frags, *lookup_table(nodes, merges, row["threshold"]))
        direct = metrics(gt, seg)
        assert row["voi_split"] == pytest.approx(direct["voi_split"])
        assert row["voi_merge"] == pytest.approx(direct["voi_merge"])
        assert row["arand"] == pytest.approx(direct["arand"])
    assert rows[0]["voi_split"] >= rows[-1]["voi_split"] and rows[0]["voi_merge"] <= rows[-1]["voi_merge"]
    plot_sweep(rows, tmp_path / "sweep.png", chosen=0.5)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_per_section_labels():
    labels = np.array([[[1, 1, 2]], [[1, 0, 2]]], np.uint64)
    out = per_section(labels)
    assert out[0, 0, 0] == out[0, 0, 1] != out[1, 0, 0]
    assert out[1, 0, 1] == 0 and len(np.unique(out[out > 0])) == 4


def test_stage_file_and_merge(tmp_path):
    write_stage_metrics(tmp_path / "segmentation.json", "segmentation",
                        {"voi_split": 0.1, "voi_merge": 0.2, "arand": 0.05}, dataset="x")
    merged = merge([tmp_path / "segmentation.json"], tmp_path / "metrics.json")
    assert merged == {"segmentation.voi_split": 0.1, "segmentation.voi_merge": 0.2, "segmentation.arand": 0.05}
    assert json.loads((tmp_path / "metrics.json").read_text()) == merged


def test_per_section_sweep_ignores_merges_across_sections_and_counts_merges_within_one():
    """ISBI-style 2D ground truth: at each threshold the segmentation is split per section before scoring."""
    gt = np.zeros((2, 4, 4), np.uint64)
    gt[:, :, :2], gt[:, :, 2:] = 1, 2
    frags = np.zeros_like(gt)
    for z in range(2):  # each half of each section in two fragments: ids 1..8
        for half in range(2):
            for row in range(2):
                frags[z, 2 * row:2 * row + 2, 2 * half:2 * half + 2] = 1 + 4 * z + 2 * half + row
    nodes = np.arange(1, 9, dtype=np.uint64)
    merges = np.array([(1, 2, 0.1), (3, 4, 0.1), (5, 6, 0.1), (7, 8, 0.1),  # halves whole
                       (1, 5, 0.3),  # the left halves of the two sections: one object in 3D
                       (1, 3, 0.5)],  # left and right of section 0: a merge
                      dtype=[("a", np.uint64), ("b", np.uint64), ("score", np.float64)])
    gt2d = per_section(gt)
    rows = {r["threshold"]: r for r in threshold_sweep(gt2d, frags, nodes, merges, [0.05, 0.2, 0.4, 0.6],
                                                       sections=True)}
    assert rows[0.05]["voi_split"] == pytest.approx(1.0) and rows[0.05]["voi_merge"] == 0
    assert rows[0.2]["voi"] == 0 and rows[0.4]["voi"] == 0
    assert rows[0.6]["voi_merge"] > 0 and rows[0.6]["voi_split"] == 0
    # scored as 3D, the merge across sections at 0.3 would count against the per-section ground truth
    assert threshold_sweep(gt2d, frags, nodes, merges, [0.4])[0]["voi_merge"] > 0
