"""Synapse stage: cleft stitching across blocks, partner assignment, the one-to-one matching metric."""

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import io
from connectomix import synapses as syn
from connectomix.evaluate import synapses as ev
from connectomix.synthetic.synapse_maps import maps_from_ground_truth

VS = (40.0, 8.0, 8.0)

# Toy tissue (all z): 1 | 2 | 3 (y < 40) / 5 (y >= 40) | 4, separated along x at 32, 64, 96.
# Clefts: (name, slices, pre object, post object, pre side, polarity mode)
CLEFTS = {
    "clear": (np.s_[2:8, 8:28, 31:33], 1, 2, "clear"),
    "ambiguous": (np.s_[2:8, 40:60, 31:33], 1, 2, "ambiguous"),
    "autapse": (np.s_[2:8, 8:28, 111:113], 4, 4, "clear"),
    "three": (np.s_[2:8, 24:46, 63:65], 2, 3, "clear"),
    "no_segment": (np.s_[11:13, 50:56, 12:14], 0, 0, "none"),
    "tiny": (np.s_[12:13, 8:10, 120:122], 4, 4, "clear"),
}


def toy_labels(shape=(16, 64, 128)):
    labels = np.zeros(shape, np.uint64)
    labels[:, :, :32] = 1
    labels[:, :, 32:64] = 2
    labels[:, :40, 64:96] = 3
    labels[:, 40:, 64:96] = 5
    labels[:, :, 96:] = 4
    labels[9:16, 42:64, 4:22] = 0  # an extracellular pocket around the 'no_segment' cleft
    return labels


def toy_maps(labels, noise=0.03, seed=0):
    """uint8 (cleft, pre, post) maps for the toy clefts: pre/post high on each side of a cleft within 80 nm."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    maps = np.full((3,) + labels.shape, 0.05, np.float32)
    xs = np.arange(labels.shape[2])[None, None, :]
    for name, (sl, pre, post, mode) in CLEFTS.items():
        mask = np.zeros(labels.shape, bool)
        mask[sl] = True
        maps[0][mask] = 0.95
        near = ndimage.distance_transform_edt(~mask, sampling=VS) <= 80
        x0, x1 = sl[2].start, sl[2].stop - 1
        pre_side = near & (xs <= x0) & (labels == pre) & ~mask
        post_side = near & (xs >= x1) & (labels == post) & ~mask
        if mode == "clear":
            maps[1][pre_side] = 0.9
            maps[2][post_side] = 0.9
        elif mode == "ambiguous":
            for side in (pre_side, post_side):
                maps[1][side] = 0.5
                maps[2][side] = 0.5
    maps += rng.normal(0, noise, maps.shape).astype(np.float32)
    return np.round(np.clip(maps, 0, 1) * 255).astype(np.uint8)


def write_toy(root, labels, maps, chunks=(4, 16, 16)):
    """The maps, the segmentation and an image (grey, darker where the cleft channel is high)."""
    io.write_full(root, "raw", (200 - maps[0] // 3).astype(np.uint8), chunks, VS)
    io.write_full(root, "synapse_maps", maps, (3,) + chunks, VS, channels=("cleft", "pre", "post"))
    io.write_full(root, "segmentation", labels, chunks, VS, is_label=True)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    labels = toy_labels()
    write_toy(tmp / "v.zarr", labels, toy_maps(labels))
    params = {"min_size_voxels": 10}
    summary = syn.detect_synapses(tmp / "v.zarr", tmp / "work", params, block_shape=(8, 32, 32))
    clefts = pd.read_parquet(tmp / "work" / "clefts.parquet")
    table = pd.read_parquet(tmp / "work" / "synapses.parquet")
    return {"tmp": tmp, "labels": labels, "summary": summary, "clefts": clefts, "table": table}


def _cleft_row(toy, name):
    sl = CLEFTS[name][0]
    lowest = tuple(s.start for s in sl)
    cid = syn.cleft_id(lowest)
    rows = toy["clefts"][toy["clefts"]["id"] == cid]
    assert len(rows) == 1, f"cleft {name} (id {cid}) not found once in {toy['clefts']['id'].tolist()}"
    return rows.iloc[0]


def test_clear_pre_post_assigned_with_positions(toy):
    row = _cleft_row(toy, "clear")
    assert row["status"] == "accepted"
    assert (row["pre"], row["post"]) == (1, 2)
    assert row["score"] > 0.5
    syn_row = toy["table"][toy["table"]["id"] == row["id"]].iloc[0]
    assert (syn_row["pre_pt_root_id"], syn_row["post_pt_root_id"]) == (1, 2)
    x, y, z = syn_row["ctr_pt_position"]
    assert z == pytest.approx(4.5 * 40) and y == pytest.approx(17.5 * 8) and x == pytest.approx(31.5 * 8)
    # partner points lie inside their segments, next to the cleft
    for key, obj in (("pre_pt_position", 1), ("post_pt_position", 2)):
        px, py, pz = syn_row[key]
        voxel = (int(round(pz / 40)), int(round(py / 8)), int(round(px / 8)))
        assert toy["labels"][voxel] == obj
        assert abs(px - x) <= 24
    assert syn_row["size"] == 6 * 20 * 2
    # area: half the exposed surface of a 6 x 20 x 2 slab, outer z faces inside the volume
    faces = 2 * (20 * 2 * 64) + 2 * (6 * 2 * 320) + 2 * (6 * 20 * 320)
    assert syn_row["size_nm2"] == pytest.approx(faces / 2)


def test_autapse_rejected(toy):
    row = _cleft_row(toy, "autapse")
    assert row["status"] == "autapse"
    assert row["pre"] == 0 and row["post"] == 0


def test_ambiguous_polarity_rejected(toy):
    assert _cleft_row(toy, "ambiguous")["status"] == "unclear_polarity"


def test_cleft_touching_three_segments_picks_the_right_pair(toy):
    row = _cleft_row(toy, "three")
    assert row["n_candidates"] == 3  # objects 2, 3 and 5 all touch it
    assert row["status"] == "accepted"
    assert (row["pre"], row["post"]) == (2, 3)


def test_no_segment_and_size_filter(toy):
    assert _cleft_row(toy, "no_segment")["status"] == "no_segment"
    tiny = syn.cleft_id((12, 8, 120))
    assert tiny not in set(toy["clefts"]["id"].tolist())
    assert len(toy["table"]) == 2
    assert toy["summary"]["status"] == {"accepted": 2, "autapse": 1, "unclear_polarity": 1, "no_segment": 1}


def test_blockwise_equals_whole_volume(toy):
    """A cleft spanning several blocks gets one id and the same partners as a single-block run."""
    whole = syn.detect_synapses(toy["tmp"] / "v.zarr", toy["tmp"] / "whole", {"min_size_voxels": 10},
                                block_shape=(16, 64, 128))
    assert whole["clefts"] == toy["summary"]["clefts"]
    a = toy["table"].sort_values("id").reset_index(drop=True)
    b = pd.read_parquet(toy["tmp"] / "whole" / "synapses.parquet").sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
    # the 'three' cleft spans blocks in y and x (block 8 x 32 x 32) and still is one cleft
    row = _cleft_row(toy, "three")
    assert row["voxels"] == 6 * 22 * 2
    # ... and lies on the 2|3 contact (16 rows of y x 6 sections) more than on the 2|5 one (6 x 6)
    assert row["interface"] == 16 * 6
    clefts_whole = pd.read_parquet(toy["tmp"] / "whole" / "clefts.parquet").set_index("id")
    assert clefts_whole.loc[row["id"], "interface"] == row["interface"]


def test_interface_faces_blockwise_sum_to_the_whole_volume():
    """Faces between two segments on a cleft, counted per block (each face by the block of its lower voxel, the
    upper one possibly in the halo), add up to the whole volume's, at block faces and the volume's end too; so do
    the values read on both sides of each contact, up to FACE_DEPTH voxels deep, and the contacts' centres and
    lowest voxels."""
    from connectomix.synapses.partners import FACE_DEPTH

    rng = np.random.default_rng(4)
    seg = rng.integers(0, 5, (12, 20, 24)).astype(np.uint64)
    nearest = np.where(rng.random(seg.shape) < 0.9, rng.integers(1, 4, seg.shape), 0).astype(np.uint64)
    near = rng.random(seg.shape) < 0.7
    values = {k: rng.integers(0, 256, seg.shape).astype(np.uint8) for k in ("pre", "post", "raw")}
    full = tuple(slice(0, n) for n in seg.shape)
    table = syn.interface_faces(seg, nearest, near, full, values=values).set_index(["id", "segment_a", "segment_b"])
    whole = table["faces"]
    # by hand, along x only, for one triple
    a, b = seg[:, :, :-1], seg[:, :, 1:]
    ok = (nearest[:, :, :-1] == 1) & (nearest[:, :, 1:] == 1) & near[:, :, :-1] & near[:, :, 1:]
    along_x = int((ok & (((a == 2) & (b == 3)) | ((a == 3) & (b == 2)))).sum())
    assert along_x > 0 and whole.loc[(1, 2, 3)] > along_x
    from connectomix.blocks import BlockGrid

    parts = []
    for block in BlockGrid(seg.shape, (4, 8, 8), (FACE_DEPTH,) * 3):
        r = block.read.slices
        parts.append(syn.interface_faces(seg[r], nearest[r], near[r], block.write_in_read, block.read.offset,
                                         {k: v[r] for k, v in values.items()}))
    summed = syn.combine_interfaces(parts).set_index(["id", "segment_a", "segment_b"])
    pd.testing.assert_frame_equal(summed.sort_index(), table.sort_index(), check_dtype=False)
    assert (table["n_a"] > table["faces"]).any()  # sides are read deeper than the face's own voxels
    # the lowest voxel of a contact on each side lies in that side's segment
    for (cid, a, b), row in table.head(20).iterrows():
        for first, segment in ((row["first_a"], a), (row["first_b"], b)):
            assert seg[tuple(syn.cleft_voxel(first)[0])] == segment
    assert set(whole.index.get_level_values(0)) <= {1, 2, 3}
    assert (whole.index.get_level_values(1) < whole.index.get_level_values(2)).all()


@pytest.mark.parametrize("connectivity", [6, 26])
def test_stitching_matches_whole_volume_components(tmp_path, connectivity):
    """Random blobs across many blocks: the stitched `clefts` array equals whole-volume cc3d, ids included."""
    import cc3d
    from scipy import ndimage

    rng = np.random.default_rng(connectivity)
    shape = (16, 64, 80)
    field = ndimage.gaussian_filter(rng.normal(size=shape), (1.0, 2.5, 2.5))
    prob = (field > np.quantile(field, 0.9)).astype(np.uint8) * 230
    maps = np.stack([prob, prob // 2, prob // 3])
    write_toy(tmp_path / "v.zarr", np.ones(shape, np.uint64), maps, chunks=(4, 16, 16))
    params = {"connectivity": connectivity, "min_size_voxels": 8}
    syn.detect_synapses(tmp_path / "v.zarr", tmp_path / "w", params, block_shape=(8, 32, 32))
    got = np.asarray(io.open_array(tmp_path / "v.zarr", "clefts")[...])

    comp = cc3d.connected_components(prob > 127, connectivity=connectivity)
    expected = np.zeros(shape, np.uint64)
    flat = comp.ravel()
    ids, first, counts = np.unique(flat, return_index=True, return_counts=True)
    lut = np.zeros(int(ids.max()) + 1, np.uint64)
    for i, f, c in zip(ids, first, counts):
        if i and c >= 8:
            lut[i] = syn.cleft_id(np.unravel_index(f, shape))
    expected = lut[comp]
    assert (expected > 0).sum() > 1000
    boxes = [b for b in ndimage.find_objects(comp) if b is not None]
    spanning = [b for b in boxes if any(s.start // n != (s.stop - 1) // n for s, n in zip(b, (8, 32, 32)))]
    assert len(spanning) > 3  # the test really crosses block faces
    np.testing.assert_array_equal(got, expected)


def test_cleft_voxel_unpacks_cleft_id():
    zyx = np.array([[0, 0, 0], [3, 70000, 5], [2097151, 1, 2097151]])
    np.testing.assert_array_equal(syn.cleft_voxel(syn.cleft_id(zyx.T)), zyx)


def test_cleft_ids_stay_when_the_volume_grows(toy, tmp_path):
    """The same data in a volume grown by 64 voxels in +x (and in y) keeps every cleft id and its table row."""
    labels = toy["labels"]
    maps = toy_maps(labels)
    grown_labels = np.zeros((16, 96, 192), np.uint64)
    grown_labels[:, :64, :128] = labels
    grown_maps = np.zeros((3, 16, 96, 192), np.uint8)
    grown_maps[:, :, :64, :128] = maps
    write_toy(tmp_path / "g.zarr", grown_labels, grown_maps)
    syn.detect_synapses(tmp_path / "g.zarr", tmp_path / "work", {"min_size_voxels": 10}, block_shape=(8, 32, 32))
    grown = pd.read_parquet(tmp_path / "work" / "clefts.parquet").sort_values("id").reset_index(drop=True)
    before = toy["clefts"].sort_values("id").reset_index(drop=True)
    assert grown["id"].tolist() == before["id"].tolist()
    # floating-point sums over a different set of blocks: equal to rounding
    pd.testing.assert_frame_equal(grown[before.columns], before, check_exact=False, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="below 2097152"):
        syn.cleft_id((0, 0, 1 << 21))


def test_assign_partners_rules_on_tables():
    clefts = pd.DataFrame({"id": np.array([10, 20, 30, 40], np.uint64), "cleft_prob": [0.9, 0.9, 0.9, 0.9]})
    rows = [
        # clear: 1 pre, 2 post, 3 a bystander touching the edge
        (10, 1, 100, 90, 10, 50), (10, 2, 100, 10, 85, 50), (10, 3, 100, 5, 5, 20),
        # one object on both sides
        (20, 7, 200, 90, 90, 100),
        # two strong pre sides: no post partner
        (30, 8, 100, 90, 10, 50), (30, 9, 100, 85, 12, 50),
        # the post side has too little contact to count
        (40, 1, 100, 90, 10, 50), (40, 2, 100, 10, 90, 2),
    ]
    pairs = pd.DataFrame(rows, columns=["id", "segment", "voxels", "sum_pre", "sum_post", "contact"])
    pairs[["pt_z", "pt_y", "pt_x"]] = 0.0
    pairs["id"] = pairs["id"].astype(np.uint64)
    pairs["segment"] = pairs["segment"].astype(np.uint64)
    out = syn.assign_partners(clefts, pairs, syn.resolve()).set_index("id")
    assert out.loc[10, "status"] == "accepted" and (out.loc[10, "pre"], out.loc[10, "post"]) == (1, 2)
    assert out.loc[10, "score"] == pytest.approx(0.9 * min(0.9 - 0.1, 0.85 - 0.1))
    assert out.loc[20, "status"] == "autapse"
    assert out.loc[30, "status"] == "unclear_polarity"
    # only object 1 is a candidate: it wins both channels but has no real post signal
    assert out.loc[40, "status"] == "unclear_polarity"
    assert out.loc[40, "pre"] == 0 and out.loc[40, "n_candidates"] == 1


def test_relative_polarity_compares_the_sides():
    """Maps that rank the sides right but are high on both (uncalibrated): absolute rejects, relative accepts."""
    clefts = pd.DataFrame({"id": np.array([10, 20, 30], np.uint64), "cleft_prob": [0.8, 0.8, 0.8]})
    rows = [
        # pre side: pre 0.80, post 0.77; post side: pre 0.60, post 0.78; a bystander 3
        (10, 1, 100, 80, 77, 50), (10, 2, 100, 60, 78, 50), (10, 3, 100, 40, 40, 20),
        # both sides alike: no polarity either way
        (20, 4, 100, 70, 70, 50), (20, 5, 100, 70, 71, 50),
        # a single candidate: one object on both sides, as before
        (30, 7, 200, 90, 90, 100),
    ]
    pairs = pd.DataFrame(rows, columns=["id", "segment", "voxels", "sum_pre", "sum_post", "contact"])
    pairs[["pt_z", "pt_y", "pt_x"]] = 0.0
    pairs["id"] = pairs["id"].astype(np.uint64)
    pairs["segment"] = pairs["segment"].astype(np.uint64)
    absolute = syn.assign_partners(clefts, pairs, syn.resolve({"min_polarity": 0.05})).set_index("id")
    assert (absolute["status"] != "accepted").all()
    out = syn.assign_partners(clefts, pairs, syn.resolve({"min_polarity": 0.05, "polarity": "relative"})).set_index("id")
    assert out.loc[10, "status"] == "accepted" and (out.loc[10, "pre"], out.loc[10, "post"]) == (1, 2)
    assert out.loc[10, "polarity"] == pytest.approx(((0.80 - 0.77) - (0.60 - 0.78)) / 2)
    assert out.loc[10, "score"] == pytest.approx(0.8 * out.loc[10, "polarity"])
    assert out.loc[20, "status"] == "unclear_polarity" and out.loc[20, "pre"] == 0
    assert out.loc[30, "status"] == "autapse"
    with pytest.raises(ValueError, match="synapses.polarity"):
        syn.resolve({"polarity": "both"})


def test_interface_pairing_ignores_noisy_bystanders():
    """Small segments near a cleft have noisy channel means; the cleft lies on the 1|2 contact, so only that pair
    is judged: candidates-pairing is fooled by bystander 3, interface-pairing is not."""
    clefts = pd.DataFrame({"id": np.array([10, 20, 30], np.uint64), "cleft_prob": [0.9, 0.9, 0.9]})
    rows = [
        # 1 pre side (pre 0.70, post 0.60), 2 post side (0.55, 0.75), 3 a small bystander (0.90, 0.40)
        (10, 1, 400, 280, 240, 80), (10, 2, 400, 220, 300, 80), (10, 3, 10, 9, 4, 6),
        # the contact 4|5 is the right one, but 5 does not look like a post side: unclear, not a guess
        (20, 4, 300, 210, 150, 60), (20, 5, 300, 210, 150, 60), (20, 6, 300, 60, 270, 60),
        # no contact on the cleft: judged among all candidates, as before
        (30, 7, 300, 240, 60, 60), (30, 8, 300, 60, 240, 60),
    ]
    pairs = pd.DataFrame(rows, columns=["id", "segment", "voxels", "sum_pre", "sum_post", "contact"])
    pairs[["pt_z", "pt_y", "pt_x"]] = 0.0
    pairs["id"] = pairs["id"].astype(np.uint64)
    pairs["segment"] = pairs["segment"].astype(np.uint64)
    interfaces = pd.DataFrame({"id": np.array([10, 10, 20, 20], np.uint64),
                               "segment_a": np.array([1, 2, 4, 5], np.uint64),
                               "segment_b": np.array([2, 3, 5, 6], np.uint64), "faces": [40, 3, 30, 2]})
    params = {"polarity": "relative", "min_polarity": 0.02}
    old = syn.assign_partners(clefts, pairs, syn.resolve({**params, "pairing": "candidates"}), interfaces)
    assert old.set_index("id").loc[10, "pre"] == 3
    out = syn.assign_partners(clefts, pairs, syn.resolve(params), interfaces).set_index("id")
    assert out.loc[10, "status"] == "accepted" and (out.loc[10, "pre"], out.loc[10, "post"]) == (1, 2)
    assert out.loc[10, "interface"] == 40 and out.loc[10, "n_candidates"] == 3
    assert out.loc[10, "polarity"] == pytest.approx(((0.70 - 0.60) - (0.55 - 0.75)) / 2)
    assert out.loc[20, "status"] == "unclear_polarity" and out.loc[20, "pre"] == 0
    assert out.loc[30, "status"] == "accepted" and (out.loc[30, "pre"], out.loc[30, "post"]) == (7, 8)
    assert out.loc[30, "interface"] == 0
    with pytest.raises(ValueError, match="synapses.pairing"):
        syn.resolve({"pairing": "nearest"})
    with pytest.raises(ValueError, match="synapses.interface_nm"):
        syn.resolve({"interface_nm": 500.0})


# --- matching metric ---------------------------------------------------------------------------------------------


def greedy_match(pred, gt, tol):
    """Nearest pair first: the baseline the Hungarian matching must beat."""
    d = np.linalg.norm(pred[:, None] - gt[None], axis=2)
    used_p, used_g, n = set(), set(), 0
    for i, j in sorted(np.ndindex(d.shape), key=lambda ij: d[ij]):
        if d[i, j] <= tol and i not in used_p and j not in used_g:
            used_p.add(i), used_g.add(j)
            n += 1
    return n


def test_hungarian_beats_greedy():
    # pred A sits between gt 1 and gt 2 (nearest to gt 1); pred B reaches only gt 1.
    gt = np.array([[0, 0, 0], [0, 0, 300.0]])
    pred = np.array([[0, 0, 140.0], [0, 0, -150.0]])
    assert greedy_match(pred, gt, 200) == 1
    i_pred, i_gt = ev.match_points(pred, gt, 200)
    assert list(zip(i_pred, i_gt)) == [(0, 1), (1, 0)]


def test_matching_is_one_to_one_and_gated():
    gt = np.array([[0, 0, 0], [0, 0, 1000.0], [0, 5000, 0]])
    pred = np.array([[0, 0, 10.0], [0, 0, 20.0], [0, 0, 1150.0], [0, 9000, 0]])
    i_pred, i_gt = ev.match_points(pred, gt, 200)
    assert len(set(i_gt)) == len(i_gt) == 2
    assert list(zip(i_pred, i_gt)) == [(0, 0), (2, 1)]  # 0 is nearer gt 0 than 1 is
    assert ev.prf(2, 4, 3) == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7})
    coincident = ev.match_points(gt, gt, 200)
    assert list(coincident[0]) == [0, 1, 2] and list(coincident[1]) == [0, 1, 2]


def test_evaluate_partner_accuracy_with_overlap_mapping():
    seg = np.zeros((2, 4, 4), np.uint64)
    gt = np.zeros((2, 4, 4), np.uint64)
    seg[:, :, :2], seg[:, :, 2:] = 11, 12
    gt[:, :, :2], gt[:, :, 2:] = 1, 2
    gt[:, 0, 1] = 2  # a minority voxel must not change the mapping
    mapping = ev.segment_to_gt(seg, gt, slab=1)
    assert mapping.to_dict() == {11: 1, 12: 2}
    pred = pd.DataFrame({"ctr_pt_position": [[0, 0, 0], [500.0, 0, 0]], "pre_pt_root_id": np.array([11, 12], np.uint64),
                         "post_pt_root_id": np.array([12, 11], np.uint64)})
    truth = pd.DataFrame({"ctr_z_nm": [0, 0.0], "ctr_y_nm": [0, 0.0], "ctr_x_nm": [50, 520.0],
                          "pre": np.array([1, 1], np.uint64), "post": np.array([2, 2], np.uint64)})
    m = ev.evaluate(pred, truth, 200, mapping)
    assert m["f1"] == 1.0 and m["partner_accuracy"] == 0.5


def test_cli_help_and_gt_maps(tmp_path, capsys):
    from connectomix import cli

    labels = toy_labels()
    clefts = np.zeros_like(labels)
    clefts[CLEFTS["clear"][0]] = 77
    truth = pd.DataFrame({"id": np.array([77], np.uint64), "pre": np.array([1], np.uint64),
                          "post": np.array([2], np.uint64)})
    maps = maps_from_ground_truth(labels, clefts, truth, VS, noise=0.0)
    assert maps[0][clefts > 0].min() > 200 and maps[0][clefts == 0].max() < 20
    assert maps[1][4, 18, 25] > 200 and maps[2][4, 18, 25] < 20  # pre side, 48 nm from the cleft
    assert maps[2][4, 18, 38] > 200 and maps[1][4, 18, 38] < 20
    with pytest.raises(SystemExit) as info:
        cli.main(["synapses", "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize("per_call", [1, 5])
def test_cli_steps_match_in_process_run(toy, tmp_path, per_call):
    """The Snakemake path (setup, block jobs, finish) gives the same table as detect_synapses, with one block per
    call or several (`--blocks A B ...`, one batch job)."""
    import json

    from connectomix import cli
    from connectomix.blockwise import grid_of, load_setup

    vol = toy["tmp"] / "v.zarr"
    work = tmp_path / "work"
    params = json.dumps({"min_size_voxels": 10})
    assert cli.main(["synapses", "setup", "--volume", str(vol), "--work-dir", str(work), "--params", params,
                     "--block-shape", "8", "32", "32", "--marker-dir", str(tmp_path / "blocks")]) == 0
    ids = grid_of(load_setup(work)).ids()
    assert len(ids) == 2 * 2 * 4
    for start in range(0, len(ids), per_call):
        assert cli.main(["synapses", "block", "--work-dir", str(work), "--blocks", *ids[start:start + per_call]]) == 0
    assert all((tmp_path / "blocks" / "synapses" / f"{block_id}.json").exists() for block_id in ids)
    out = tmp_path / "synapses.parquet"
    assert cli.main(["synapses", "finish", "--work-dir", str(work), "--synapses", str(out),
                     "--summary", str(tmp_path / "summary.json")]) == 0
    a = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    b = toy["table"].sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((tmp_path / "summary.json").read_text())["synapses"] == 2


def test_evaluate_clefts_against_a_mask_folder(tmp_path):
    """Real data's cleft masks (section PNGs, nonzero = cleft), cropped to the dataset's ROI: objects are 3D
    components matched one-to-one by centre within the tolerance."""
    from skimage.io import imsave

    from connectomix.cli import main

    truth = np.zeros((6, 40, 40), np.uint8)
    truth[2:4, 5:9, 5:9] = 1  # found
    truth[3, 30:33, 30:33] = 1  # missed
    detected = np.zeros((4, 40, 40), np.uint64)  # the dataset's ROI starts at section 2
    detected[0:2, 6:9, 5:9] = syn.cleft_id((2, 6, 5))
    detected[3, 20:23, 5:8] = syn.cleft_id((5, 20, 5))  # a false positive, 15 px (120 nm) in y and 2 sections off
    root = tmp_path / "v.zarr"
    io.write_full(root, "clefts", detected, (4, 16, 16), VS, is_label=True)
    (tmp_path / "masks").mkdir()
    for z, section in enumerate(truth):
        imsave(tmp_path / "masks" / f"{z:02d}.png", section * 255, check_contrast=False)
    out = tmp_path / "clefts.json"
    assert main(["evaluate", "clefts", "--volume", str(root), "--gt-file", str(tmp_path / "masks"),
                 "--gt-roi-offset", "2", "0", "0", "--tolerance-nm", "100", "--out", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert (m["n_pred"], m["n_gt"]) == (2, 2)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    # with a tolerance reaching the false positive's nearest truth, it still matches only one-to-one
    assert main(["evaluate", "clefts", "--volume", str(root), "--gt-file", str(tmp_path / "masks"),
                 "--gt-roi-offset", "2", "0", "0", "--tolerance-nm", "1000", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differs"):
        ev.evaluate_clefts(root, truth)  # not cropped to the ROI
