"""Training: targets (hand-checked), augmentation consistency, loss, determinism, resume, CLI."""

import json

import numpy as np
import pytest
import torch

from connectomix import io
from connectomix.cli import main
from connectomix.evaluate.boundaries import boundary_map, prf
from connectomix.models import architecture_from_params, load_checkpoint
from connectomix.synthetic.training import synthetic_data
from connectomix.train import (TrainData, affinity_targets, balanced_bce, learning_rate, load_volume_data,
                               merge_params, sample_batch, synapse_targets, train)

torch.set_num_threads(2)

TINY_MODEL = {"num_fmaps": 3, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2], [1, 2, 2]],
              "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3]]}
TINY = {"iterations": 4, "validate_every": 2, "checkpoint_every": 2, "output_shape": [2, 12, 12],
        "model": TINY_MODEL}


def test_affinity_targets_by_hand():
    labels = np.array([[[1, 1, 2],
                        [0, 0, 2]],
                       [[1, 3, 2],
                        [1, 0, 2]]], dtype=np.uint64)
    aff, mask = affinity_targets(labels, [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, -2]])
    # z: voxel v vs the section before; section 0 has no neighbour (masked)
    assert not mask[0, 0].any() and mask[0, 1].all()
    assert aff[0, 1].tolist() == [[True, False, True], [False, False, True]]
    # y: row 1 vs row 0
    assert aff[1, 0, 1].tolist() == [False, False, True] and aff[1, 1, 1].tolist() == [True, False, True]
    assert not mask[1, :, 0].any()
    # x: column j vs j - 1
    assert aff[2, 0].tolist() == [[False, True, False], [False, False, False]]
    assert aff[2, 1].tolist() == [[False, False, False], [False, False, False]]
    # long range x - 2: column 2 vs column 0
    assert mask[3, ..., 2].all() and not mask[3, ..., :2].any()
    assert aff[3, 0, 0, 2] == False and aff[3, 1, 1, 2] == False  # noqa: E712  (2 vs 1, 2 vs 1)


def test_synapse_targets_by_hand():
    labels = np.array([1, 1, 1, 2, 2, 2, 2], dtype=np.uint64).reshape(1, 1, 7)
    clefts = np.zeros_like(labels)
    clefts[0, 0, 3] = 5
    table = {"id": np.array([5, 9]), "pre": np.array([1, 2]), "post": np.array([2, 1])}  # 9: not in the volume
    out = synapse_targets(labels, clefts, table, (40, 8, 8), distance_nm=16)
    assert out[0, 0, 0].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert out[1, 0, 0].tolist() == [0, 1, 1, 0, 0, 0, 0]  # pre (label 1) within 16 nm of x=3
    assert out[2, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 0]  # post (label 2), cleft voxel included


def test_cleft_target_radius_grows_only_the_cleft_channel():
    labels = np.array([1, 1, 1, 2, 2, 2, 2], dtype=np.uint64).reshape(1, 1, 7)
    labels = np.repeat(labels, 3, axis=0)
    clefts = np.zeros_like(labels)
    clefts[1, 0, 3] = 5
    table = {"id": np.array([5]), "pre": np.array([1]), "post": np.array([2])}
    plain = synapse_targets(labels, clefts, table, (40, 8, 8), distance_nm=16)
    grown = synapse_targets(labels, clefts, table, (40, 8, 8), distance_nm=16, cleft_radius_nm=12)
    # 12 nm: one voxel in x (8 nm), none in z (40 nm)
    assert grown[0, 1, 0].tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert not grown[0, 0].any() and not grown[0, 2].any()
    # pre/post still measured from the labelled cleft
    assert np.array_equal(grown[1:], plain[1:])


def test_per_channel_class_weight_caps():
    target = torch.zeros(1, 2, 1, 1, 100)
    target[:, :, ..., 0] = 1  # 1 positive in 100 on both channels: a balanced weight of 50
    mask = torch.ones_like(target)
    logits = torch.zeros_like(target)
    logits[..., 0] = -5  # the positives are wrong
    capped = balanced_bce(logits[:, :1], target[:, :1], mask[:, :1], 5.0)
    free = balanced_bce(logits[:, :1], target[:, :1], mask[:, :1], 100.0)
    both = balanced_bce(logits, target, mask, [5.0, 100.0])
    wrong, neutral = float(np.log1p(np.exp(5.0))), float(np.log(2))  # BCE of a -5 logit on a 1; of 0 on a 0
    w_neg = 100 / (2 * 99)
    assert float(capped) == pytest.approx((5 * wrong + 99 * w_neg * neutral) / 100, rel=1e-5)
    assert float(free) == pytest.approx((50 * wrong + 99 * w_neg * neutral) / 100, rel=1e-5)
    assert float(both) == pytest.approx((float(capped) + float(free)) / 2, rel=1e-5)


def test_affinity_channels_under_rotation_and_flips():
    """Targets of a rotated/flipped volume are the original channels permuted and shifted by one voxel."""
    labels = synthetic_data((3, 12, 12), seed=4, cells=6)[1]["labels"]
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    aff = affinity_targets(labels, offsets)[0]
    # rotation by 90 degrees: R[i, j] = L[j, W-1-i]
    rot = affinity_targets(np.rot90(labels, 1, axes=(1, 2)), offsets)[0]
    assert np.array_equal(rot[0], np.rot90(aff[0], 1, axes=(1, 2)))
    assert np.array_equal(rot[2], np.rot90(aff[1], 1, axes=(1, 2)))  # new x-edges are old y-edges
    # new y-edge (i, j)-(i-1, j) is old x-edge between columns W-1-i and W-i, stored at column W-i
    shifted_x = np.zeros_like(aff[2])
    shifted_x[..., :-1] = aff[2][..., 1:]
    assert np.array_equal(rot[1][:, 1:], np.rot90(shifted_x, 1, axes=(1, 2))[:, 1:])
    # flip in x: the edge to the left becomes the edge to the right (shift by one)
    flip = affinity_targets(labels[..., ::-1], offsets)[0]
    assert np.array_equal(flip[2][..., 1:], aff[2][..., ::-1][..., :-1])
    assert np.array_equal(flip[1], aff[1][..., ::-1])


def _coded(data: TrainData) -> TrainData:
    """Raw that encodes the label of each voxel, so labels can be read back from an augmented raw crop."""
    raw = (data.labels * 17 % 251 + 1).astype(np.uint8)
    assert len(np.unique(raw)) == len(np.unique(data.labels))
    return TrainData(raw, data.labels, data.voxel_size, data.synapse, data.synapse_valid)


@pytest.mark.parametrize("misalign", [0.0, 1.0])
def test_augmented_raw_and_targets_stay_consistent(misalign):
    data = _coded(synthetic_data((10, 48, 48), seed=2, cells=10)[0])
    params = merge_params({"model": TINY_MODEL, "augment": {
        "intensity": 0, "noise": 0, "missing_section_prob": 0, "misalign_prob": misalign}})
    arch = architecture_from_params(params["model"])
    out_shape = arch.valid_output_shape((2, 12, 12))
    ctx = arch.context
    for i in range(12):
        rng = np.random.default_rng([1, i])
        raw, target, mask = sample_batch(data, arch, out_shape, 1, rng, params)
        # Read labels back from the augmented raw over the output box plus one voxel before it.
        grey = np.rint((raw[0, 0] + 1) * 127.5).astype(np.int64)
        box = tuple(slice(c - 1, c + o) for c, o in zip(ctx, out_shape))
        aff = affinity_targets(grey[box], arch.offsets)[0][(slice(None),) + (slice(1, None),) * 3]
        m = mask[0, :3].astype(bool)
        assert m.mean() > 0.5
        assert np.array_equal(aff[:3][m], target[0, :3].astype(bool)[m]), f"sample {i}"


def test_pre_post_targets_follow_the_augmented_image():
    data, gt = synthetic_data((10, 48, 48), seed=2, cells=10)
    data = _coded(data)
    code = {int(l) * 17 % 251 + 1 for l in gt["synapses"]["pre"]}, {int(l) * 17 % 251 + 1 for l in gt["synapses"]["post"]}
    params = merge_params({"model": TINY_MODEL, "synapse_sample_prob": 1.0,
                           "augment": {"intensity": 0, "noise": 0, "missing_section_prob": 0, "misalign_prob": 0}})
    arch = architecture_from_params(params["model"])
    out_shape = arch.valid_output_shape((2, 12, 12))
    ctx = arch.context
    hits = 0
    for i in range(8):
        raw, target, mask = sample_batch(data, arch, out_shape, 1, np.random.default_rng([3, i]), params)
        grey = np.rint((raw[0, 0] + 1) * 127.5).astype(np.int64)
        grey = grey[tuple(slice(c, c + o) for c, o in zip(ctx, out_shape))]
        cleft, pre, post = target[0, 3:].astype(bool)
        hits += pre.any() and post.any()
        assert set(np.unique(grey[pre]).tolist()) <= code[0]  # pre voxels are voxels of presynaptic objects
        assert set(np.unique(grey[post]).tolist()) <= code[1]
        assert mask[0, 3:].all()
    assert hits >= 4  # patches are sampled near clefts


def test_partner_zone_limits_pre_post_loss_to_the_cleft_neighbourhood():
    """With partner_zone_nm the pre/post channels count only near a cleft: both sides and nothing far away."""
    data, _ = synthetic_data((10, 48, 48), seed=2, cells=10)
    base = {"model": TINY_MODEL, "synapse_sample_prob": 1.0}
    zone_nm = 40.0
    arch = architecture_from_params(merge_params(base)["model"])
    out_shape = arch.valid_output_shape((2, 12, 12))
    inside = outside = 0
    for i in range(8):
        rng = [np.random.default_rng([5, i]) for _ in range(2)]
        _, target, everywhere = sample_batch(data, arch, out_shape, 1, rng[0], merge_params(base))
        _, same, zoned = sample_batch(data, arch, out_shape, 1, rng[1], merge_params({**base, "partner_zone_nm": zone_nm}))
        assert np.array_equal(target, same) and np.array_equal(everywhere[0, :4], zoned[0, :4])
        assert everywhere[0, 4:].all()
        zone = zoned[0, 4].astype(bool)
        assert np.array_equal(zone, zoned[0, 5].astype(bool))
        pre, post = target[0, 4].astype(bool), target[0, 5].astype(bool)
        assert zone[pre].all() and zone[post].all()  # every positive is trained ...
        inside += int((zone & ~pre).sum())  # ... against negatives next to the cleft (the other side)
        outside += int((~zone).sum())
    assert inside > 0 and outside > 0
    with pytest.raises(ValueError, match="partner_zone_nm"):
        merge_params({"partner_zone_nm": -1})


def test_balanced_bce_weighs_classes_equally():
    target = torch.zeros(1, 1, 1, 1, 10)
    target[..., 0] = 1
    mask = torch.ones_like(target)
    logits_pos_wrong = torch.zeros_like(target)
    logits_pos_wrong[..., 0] = -5  # the one positive is badly wrong, negatives at 0.5
    logits_neg_wrong = torch.zeros_like(target)
    logits_neg_wrong[..., 0] = 0
    logits_neg_wrong[..., 1:] = 5  # all nine negatives badly wrong
    a = balanced_bce(logits_pos_wrong, target, mask)
    b = balanced_bce(logits_neg_wrong, target, mask)
    # one wrong positive weighs as much as nine wrong negatives (class balance)
    assert float(a) == pytest.approx(float(b), rel=0.05)
    masked = mask.clone()
    masked[..., 1:] = 0
    assert float(balanced_bce(logits_neg_wrong, target, masked)) == pytest.approx(np.log(2), rel=1e-4)


def test_metrics_by_hand():
    pred = np.array([1, 1, 0, 0], bool)
    truth = np.array([1, 0, 1, 0], bool)
    assert prf(pred, truth) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    aff = np.ones((3, 1, 1, 4), np.float32)
    aff[2, 0, 0, 2] = 0  # cut between x=1 and x=2
    assert boundary_map(aff, "min")[0, 0].tolist() == [0, 1, 1, 0]
    assert boundary_map(aff, "max")[0, 0].tolist() == [0, 0, 0, 0]


def _weights(path):
    return torch.load(path / "weights.pt", weights_only=True)


def test_training_is_deterministic_and_resumable(tmp_path):
    data = synthetic_data((10, 40, 40), seed=0, cells=8)[0]
    a = train(data, TINY, tmp_path / "a", device="cpu", threads=1, progress=False)
    b = train(data, TINY, tmp_path / "b", device="cpu", threads=1, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["weights_sha256"] == b["weights_sha256"] and a["iterations"] == 4
    assert {"edge_f1", "boundary_f1", "cleft_f1", "loss_affinities"} <= set(a["validation"])
    other = train(data, {**TINY, "seed": 1}, tmp_path / "c", device="cpu", threads=1, progress=False)
    assert other["weights_sha256"] != a["weights_sha256"]
    # Resume: 2 iterations, then continue to 4 -> the same weights as 4 uninterrupted iterations.
    half = train(data, {**TINY, "iterations": 2}, tmp_path / "r", device="cpu", threads=1, progress=False)
    assert half["iterations"] == 2
    again = train(data, {**TINY, "iterations": 2}, tmp_path / "r", device="cpu", threads=1, progress=False)
    assert again["iterations"] == 2 and again["weights_sha256"] == half["weights_sha256"]
    full = train(data, TINY, tmp_path / "r", device="cpu", threads=1, progress=False)
    assert full["iterations"] == 4
    wr = _weights(tmp_path / "r")
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    assert [h["iteration"] for h in full["validation_history"]] == [2, 4]
    model, meta = load_checkpoint(tmp_path / "r")
    assert meta["training"]["data"]["validation_sections"] == [8, 10]
    # A longer run stopped at a checkpoint equals a shorter run: asking for that many iterations just records it.
    longer = train(data, {**TINY, "iterations": 6}, tmp_path / "l", device="cpu", threads=1, progress=False)
    assert longer["iterations"] == 6
    with pytest.raises(ValueError, match="more than the 4 requested"):
        train(data, TINY, tmp_path / "l", device="cpu", threads=1, progress=False)


def test_a_time_budget_stops_at_a_checkpoint_that_resumes_bit_exactly(tmp_path):
    data = synthetic_data((10, 40, 40), seed=0, cells=8)[0]
    whole = train(data, TINY, tmp_path / "whole", device="cpu", threads=1, progress=False)
    # a budget of 0 s is spent by the first step: it stops there, validates and writes a resumable checkpoint
    cut = train(data, {**TINY, "max_seconds": 0}, tmp_path / "cut", device="cpu", threads=1, progress=False)
    assert cut["iterations"] == 1 and [h["iteration"] for h in cut["validation_history"]] == [1]
    resumed = train(data, TINY, tmp_path / "cut", device="cpu", threads=1, progress=False)
    assert resumed["iterations"] == 4 and resumed["weights_sha256"] == whole["weights_sha256"]


def test_init_from_starts_at_a_checkpoint_and_records_it(tmp_path):
    data = synthetic_data((10, 40, 40), seed=0, cells=8)[0]
    base = train(data, TINY, tmp_path / "base", device="cpu", threads=1, progress=False)
    zero = train(data, {**TINY, "iterations": 0, "init_from": str(tmp_path / "base")}, tmp_path / "copy",
                 device="cpu", threads=1, progress=False)
    assert zero["weights_sha256"] == base["weights_sha256"]  # no step taken: the same weights
    tuned = train(data, {**TINY, "init_from": str(tmp_path / "base"), "synapse_max_class_weight": 50.0},
                  tmp_path / "tuned", device="cpu", threads=1, progress=False)
    assert tuned["training"]["init"] == {"from": str(tmp_path / "base"), "weights_sha256": base["weights_sha256"],
                                         "iterations": 4}
    assert tuned["weights_sha256"] not in (base["weights_sha256"],)
    other = {**TINY, "model": {**TINY_MODEL, "num_fmaps": 4}, "init_from": str(tmp_path / "base")}
    with pytest.raises(ValueError, match="init_from .*architecture differs"):
        train(data, other, tmp_path / "bad", device="cpu", threads=1, progress=False)


def test_train_params_are_the_schema_section_without_the_workflow_keys():
    from connectomix import config as cmx_config

    cfg = cmx_config.validate({"datasets": {"p": {"voxel_size": [40, 8, 8], "phantom": {}}}})
    section = {k: v for k, v in cfg["train"].items() if k not in ("enabled", "dataset", "device", "threads", "gpu")}
    assert merge_params(cfg["train"]) == section
    assert cfg["predict"]["checkpoint"] == "models/phantom"
    with pytest.raises(ValueError, match="unknown parameter train.model.depth"):
        merge_params({"model": {"depth": 3}})


def test_cli_trains_from_an_ome_zarr(tmp_path):
    import pandas as pd

    data, gt = synthetic_data((10, 40, 40), seed=1, cells=8)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "raw", data.raw, (8, 40, 40), (40, 8, 8))
    io.write_full(root, "gt/labels", gt["labels"], (8, 40, 40), (40, 8, 8), is_label=True)
    io.write_full(root, "gt/clefts", gt["clefts"], (8, 40, 40), (40, 8, 8), is_label=True)
    pd.DataFrame(gt["synapses"]).to_parquet(tmp_path / "synapses.parquet")
    params = json.dumps({**TINY, "iterations": 2})
    assert main(["train", "--volume", str(root), "--synapses", str(tmp_path / "synapses.parquet"),
                 "--out", str(tmp_path / "ck"), "--params", params, "--device", "cpu", "--threads", "1",
                 "--no-progress"]) == 0
    model, meta = load_checkpoint(tmp_path / "ck")
    assert meta["iterations"] == 2 and meta["training"]["data"]["n_synapses"] == len(gt["synapses"]["id"])
    assert "python -m connectomix train" in meta["training"]["command"]
    assert main(["train", "--volume", str(root), "--out", str(tmp_path / "x"), "--params", "{bad"]) == 1


def test_cosine_learning_rate_decays_from_base_to_floor_and_rejects_unknown_schedules():
    params = merge_params({"iterations": 101, "learning_rate": 1e-3, "lr_schedule": "cosine", "min_lr_fraction": 0.1})
    rates = [learning_rate(params, i) for i in range(101)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[50] == pytest.approx(0.55e-3)
    assert rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(merge_params({"learning_rate": 2e-4}), 77) == 2e-4
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(merge_params({"lr_schedule": "step"}), 0)


def test_cli_trains_on_ground_truth_kept_in_a_file(tmp_path):
    """A real dataset keeps its labels outside the volume (gala: HDF5, 0 = boundary): --gt-file trains on them,
    cropped to the dataset's ROI; a shape mismatch names the file."""
    import h5py

    data, gt = synthetic_data((10, 40, 40), seed=2, cells=8)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "raw", data.raw[:, 4:, :], (8, 36, 40), (40, 8, 8))
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["stack"] = gt["labels"].astype(np.int32)
    params = json.dumps({**TINY, "iterations": 2, "model": {**TINY_MODEL, "synapses": False}})
    common = ["--params", params, "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main(["train", "--volume", str(root), "--gt-file", str(tmp_path / "gt.h5"), "--gt-roi-offset", "0", "4",
                 "0", "--out", str(tmp_path / "ck"), *common]) == 0
    _, meta = load_checkpoint(tmp_path / "ck")
    assert meta["iterations"] == 2 and meta["training"]["data"]["labels"] == str(tmp_path / "gt.h5")
    assert "--gt-file" in meta["training"]["command"] and "--gt-roi-offset 0 4 0" in meta["training"]["command"]
    with pytest.raises(ValueError, match=r"gt\.h5: shape \[10, 40, 40\] differs"):
        load_volume_data(root, labels=gt["labels"], labels_source=str(tmp_path / "gt.h5"))
    assert main(["train", "--volume", str(root), "--out", str(tmp_path / "x"), *common]) == 1  # no gt/labels


def test_workflow_trains_a_real_dataset_on_its_evaluation_ground_truth():
    from connectomix.workflow.predict import train_ground_truth

    cfg = {"datasets": {"gala-train": {"roi": {"offset": [0, 2, 3], "shape": [4, 5, 6]}}, "isbi": {}},
           "segment": {"evaluation": {"ground_truth": {
               "gala-train": {"path": "gt dir/train.h5", "key": "stack", "format": "hdf5"},
               "isbi": {"path": "labels", "format": "png-membrane", "per_section": True}}}}}
    assert train_ground_truth(cfg, "phantom", True) == ([], "")
    files, args = train_ground_truth(cfg, "gala-train", False)
    assert files == ["gt dir/train.h5"]
    assert args == "--gt-file 'gt dir/train.h5' --gt-format hdf5 --gt-key stack --gt-roi-offset 0 2 3"
    # per-section (2D) labels train the in-plane affinities only; cleft masks come from synapses.evaluation
    assert train_ground_truth(cfg, "isbi", False) == (
        ["labels"], "--gt-file labels --gt-format png-membrane --gt-per-section")
    cfg["datasets"]["vnc"] = {"roi": {"offset": [8, 0, 0], "shape": [4, 64, 64]}}
    cfg["segment"]["evaluation"]["ground_truth"]["vnc"] = {"path": "vnc/membranes", "format": "png-boundary",
                                                           "per_section": True}
    cfg["synapses"] = {"evaluation": {"ground_truth": {"vnc": {"path": "vnc/synapses", "format": "png-mask"}}}}
    assert train_ground_truth(cfg, "vnc", False) == (
        ["vnc/membranes", "vnc/synapses"], "--gt-file vnc/membranes --gt-format png-boundary --gt-per-section "
        "--clefts-file vnc/synapses --clefts-format png-mask --gt-roi-offset 8 0 0")
    with pytest.raises(ValueError, match="segment.evaluation.ground_truth.other"):
        train_ground_truth({**cfg, "datasets": {"other": {}}}, "other", False)


def test_cli_trains_on_2d_section_labels_and_cleft_masks(tmp_path):
    """Real-data ground truth as section images (vnc-sstem style): membranes (nonzero = membrane) give 2D
    instances, so the z affinities get no target; cleft masks train the cleft channel alone; the ROI offset crops
    both, and validation reports cleft objects but no partner metrics."""
    from skimage.io import imsave

    data, gt = synthetic_data((10, 40, 40), seed=3, cells=8)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "raw", data.raw[2:], (8, 40, 40), (40, 8, 8))
    for name, stack in (("membranes", gt["labels"] == 0), ("synapses", data.synapse[0])):
        (tmp_path / name).mkdir()
        for z, section in enumerate(stack):
            imsave(tmp_path / name / f"{z:02d}.png", section.astype(np.uint8) * 255, check_contrast=False)
    params = json.dumps({**TINY, "iterations": 2, "validation_fraction": 0.25,
                         "model": {**TINY_MODEL, "synapses": True}})
    assert main(["train", "--volume", str(root), "--gt-file", str(tmp_path / "membranes"), "--gt-format",
                 "png-boundary", "--gt-per-section", "--clefts-file", str(tmp_path / "synapses"),
                 "--gt-roi-offset", "2", "0", "0", "--out", str(tmp_path / "ck"), "--params", params,
                 "--device", "cpu", "--threads", "1", "--no-progress"]) == 0
    _, meta = load_checkpoint(tmp_path / "ck")
    described = meta["training"]["data"]
    assert described["per_section"] and described["clefts"] == str(tmp_path / "synapses")
    assert "--gt-per-section" in meta["training"]["command"] and "--clefts-file" in meta["training"]["command"]
    validation = meta["validation"]
    assert "cleft_objects_f1" in validation and "pre_f1" not in validation and "edge_f1" in validation
    # the loaded data: 2D instances (no id runs across sections), z affinities masked, clefts as cropped
    from connectomix.evaluate.segmentation import load_ground_truth

    labels = load_ground_truth(gt_file=tmp_path / "membranes", gt_format="png-boundary")
    clefts = load_ground_truth(gt_file=tmp_path / "synapses", gt_format="png-mask")
    loaded = load_volume_data(root, labels=labels, labels_source="m", labels_offset=(2, 0, 0), per_section=True,
                              clefts=clefts, clefts_source="s")
    assert np.array_equal(loaded.synapse[0], data.synapse[0][2:]) and loaded.synapse_valid == (True, False, False)
    assert np.array_equal(loaded.labels > 0, gt["labels"][2:] > 0)
    arch = architecture_from_params(merge_params(json.loads(params))["model"])
    _, mask = loaded.affinity_targets(loaded.labels, arch.offsets)
    z = [c for c, o in enumerate(arch.offsets) if o[0] != 0]
    assert z and not mask[z].any() and mask[[c for c in range(len(arch.offsets)) if c not in z]].any()
    _, _, batch_mask = sample_batch(loaded, arch, (2, 12, 12), 2, np.random.default_rng(0), merge_params({}))
    assert not batch_mask[:, z].any() and batch_mask[:, [1, 2]].any()
    with pytest.raises(ValueError, match="no .png"):
        load_ground_truth(gt_file=tmp_path / "ck", gt_format="png-mask")
    # a volume's own gt/clefts (a phantom's) still trains the cleft channel and is named as the source
    io.write_full(root, "gt/labels", gt["labels"][2:], (8, 40, 40), (40, 8, 8), is_label=True)
    io.write_full(root, "gt/clefts", data.synapse[0][2:].astype(np.uint64), (8, 40, 40), (40, 8, 8), is_label=True)
    own = load_volume_data(root)
    assert own.description["clefts"] == "gt/clefts" and own.synapse_valid == (True, False, False)
    assert not own.per_section and np.array_equal(own.synapse[0], data.synapse[0][2:])


def test_the_gpu_budget_script_trains_the_campaign_recipe_on_cpu(tmp_path):
    """`make train-gpu` (scripts/train-gpu.sh) on CPU: a budget of 0 s takes one step of the recipe's architecture,
    validates and leaves a checkpoint that the next call resumes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    recipe = json.loads((repo / "models/campaigns/gpu/recipe.json").read_text())
    small = {"seed": 3, "shape": [24, 256, 256], "n_neurons": 6, "n_synapses": 8, "n_orphan_synapses": 8,
             "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0, "axon_length_nm": 1500.0}
    cmd = [str(repo / "scripts/train-gpu.sh"), str(repo / "models/campaigns/gpu/recipe.json"), str(tmp_path / "run"),
           "0", "cpu", json.dumps(small)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                            cwd=repo)
    assert result.returncode == 0, result.stderr[-3000:]
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta["iterations"] == 1 and meta["validation"]["edge_f1"] > 0
    assert meta["architecture"]["num_fmaps"] == recipe["params"]["model"]["num_fmaps"]
    assert len(meta["offsets"]) == 3 + len(recipe["params"]["model"]["long_range_offsets"])


def test_transposed_patches_of_isotropic_data_keep_raw_and_targets_consistent():
    raw_data = synthetic_data((24, 24, 24), seed=3, cells=10)[0]
    data = _coded(TrainData(raw_data.raw, raw_data.labels, (10, 10, 10)))
    params = merge_params({"model": {**TINY_MODEL, "kernel_sizes": [[3, 3, 3]] * 3}, "augment": {
        "intensity": 0, "noise": 0, "missing_section_prob": 0, "misalign_prob": 0, "transpose": True}})
    arch = architecture_from_params(params["model"])
    out_shape = arch.valid_output_shape((4, 8, 8))
    ctx = arch.context
    seen_views = set()
    for i in range(16):
        rng = np.random.default_rng([2, i])
        raw, target, mask = sample_batch(data, arch, out_shape, 1, rng, params)
        grey = np.rint((raw[0, 0] + 1) * 127.5).astype(np.int64)
        box = tuple(slice(c - 1, c + o) for c, o in zip(ctx, out_shape))
        aff = affinity_targets(grey[box], arch.offsets)[0][(slice(None),) + (slice(1, None),) * 3]
        m = mask[0, :3].astype(bool)
        assert np.array_equal(aff[:3][m], target[0, :3].astype(bool)[m]), f"sample {i}"
        seen_views.add(tuple(rng.permutation(3)))
    assert len(seen_views) > 1
    anisotropic = TrainData(raw_data.raw, raw_data.labels, (40, 8, 8))
    with pytest.raises(ValueError, match="isotropic voxels"):
        sample_batch(anisotropic, arch, out_shape, 1, np.random.default_rng(0), params)


def test_equal_dataset_sampling_draws_a_small_volume_as_often_as_a_large_one():
    big = synthetic_data((16, 64, 64), seed=0, cells=8)[0]
    small = synthetic_data((4, 24, 24), seed=1, cells=4)[0]
    small = TrainData(np.full_like(small.raw, 255), small.labels, small.voxel_size)  # white: tells its patches apart
    base = {"model": {**TINY_MODEL, "synapses": False}, "augment": {
        "intensity": 0, "noise": 0, "missing_section_prob": 0, "misalign_prob": 0}}
    arch = architecture_from_params(merge_params(base)["model"])
    out_shape = arch.valid_output_shape((1, 4, 4))

    def share_of_small(sampling):
        params = merge_params({**base, "dataset_sampling": sampling})
        raw = sample_batch([big, small], arch, out_shape, 200, np.random.default_rng(0), params)[0]
        return float(np.mean(raw.reshape(len(raw), -1).min(axis=1) == 1.0))

    by_voxels, equal = share_of_small("voxels"), share_of_small("equal")
    assert by_voxels < 0.1  # 2304 of 67840 voxels: about 3 %
    assert 0.4 < equal < 0.6


def test_gamma_and_blur_change_grey_values_not_their_order_or_range():
    from connectomix.train.data import _intensity

    raw = synthetic_data((4, 32, 32), seed=1, cells=6)[0].raw
    aug = merge_params({"augment": {"intensity": 0, "noise": 0, "missing_section_prob": 0, "gamma": 0.7}})["augment"]
    base = _intensity(raw, np.random.default_rng(0), {**aug, "gamma": 0.0})
    changed = [_intensity(raw, np.random.default_rng(s), aug) for s in range(4)]
    assert any(np.abs(c - base).max() > 0.05 for c in changed)
    order = np.argsort(raw.ravel(), kind="stable")
    for c in changed:  # gamma is monotone: the grey-value order is kept, the range stays [-1, 1]
        assert np.all(np.diff(c.ravel()[order]) >= -1e-6) and c.min() >= -1 and c.max() <= 1
    blurred = [_intensity(raw, np.random.default_rng(s), {**aug, "gamma": 0.0, "blur": 3.0}) for s in range(4)]
    assert min(b.std() for b in blurred) < 0.9 * base.std()  # sigma is drawn per patch: some are blurred
    assert all(np.allclose(b.mean(), base.mean(), atol=0.05) for b in blurred)
    # percentile normalization: the volume's range maps to [-1, 1] before augmentation
    lo, hi = np.percentile(raw, [1, 99])
    stretched = _intensity(raw, np.random.default_rng(0), {**aug, "gamma": 0.0}, (lo, hi))
    assert stretched.min() == -1 and stretched.max() == 1


def test_training_on_several_volumes_normalizes_each_and_records_them(tmp_path):
    from connectomix.train.data import rescaled

    a = synthetic_data((10, 40, 40), seed=0, cells=8)[0]
    b = synthetic_data((10, 40, 40), seed=1, cells=8)[0]
    b = TrainData(np.rint(60 + b.raw * 0.5).astype(np.uint8), b.labels, (40, 4, 4))  # other contrast, pixel
    b8 = rescaled(b, (40, 8, 8))
    assert b8.raw.shape == (10, 20, 20) and b8.voxel_size == (40, 8.0, 8.0)
    assert set(np.unique(b8.labels)) <= set(np.unique(b.labels))  # nearest: no invented label ids
    params = {**TINY, "input_normalization": {"method": "percentile", "percentiles": [1, 99]}}
    meta = train([a, b8], params, tmp_path / "m", device="cpu", threads=1, progress=False)
    datasets = meta["training"]["data"]["datasets"]
    assert [d["shape"] for d in datasets] == [[10, 40, 40], [10, 20, 20]]
    assert datasets[1]["rescaled_from_voxel_size"] == [40, 4, 4]
    assert datasets[0]["input_range"] == pytest.approx(list(np.percentile(a.raw[::1], [1, 99])), abs=0.6)
    assert datasets[1]["input_range"][1] - datasets[1]["input_range"][0] < datasets[0]["input_range"][1] - \
        datasets[0]["input_range"][0]
    assert {"d0/boundary_f1", "d1/boundary_f1"} <= set(meta["validation"])
    model, saved = load_checkpoint(tmp_path / "m")
    assert saved["input_normalization"] == {"method": "percentile", "percentiles": [1.0, 99.0]}
    assert model.input_normalization == saved["input_normalization"]
    # a checkpoint written before the field existed reads as the fixed map
    saved.pop("input_normalization")
    (tmp_path / "m" / "checkpoint.json").write_text(json.dumps(saved))
    assert load_checkpoint(tmp_path / "m")[0].input_normalization == {"method": "fixed"}
    fixed = train(a, TINY, tmp_path / "f", device="cpu", threads=1, progress=False)
    assert fixed["input_normalization"] == {"method": "fixed"}
    assert meta["untrained_affinities"] == fixed["untrained_affinities"] == []  # 3D labels teach every channel
    flat = TrainData(a.raw, a.labels, a.voxel_size, per_section=True)
    sections = train(flat, TINY, tmp_path / "s", device="cpu", threads=1, progress=False)
    assert sections["untrained_affinities"] == [0]  # per-section labels: the z channel has no target


def test_cli_trains_on_several_sources_resampled_to_one_pixel_size(tmp_path):
    """--sources: a volume with its labels in a file and a phantom, together, each resampled to train.pixel_nm."""
    import h5py

    data, gt = synthetic_data((10, 40, 40), seed=2, cells=8)
    root = tmp_path / "volume.zarr"
    io.write_full(root, "raw", data.raw, (8, 40, 40), (40, 4, 4))
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["stack"] = gt["labels"].astype(np.int32)
    sources = [{"volume": str(root), "gt_file": str(tmp_path / "gt.h5"), "gt_key": "stack"},
               {"phantom": {"seed": 3, "shape": [16, 128, 128], "n_neurons": 6, "n_synapses": 8,
                            "n_orphan_synapses": 8, "soma_radius_nm": 170.0, "dendrite_length_nm": 700.0,
                            "axon_length_nm": 1500.0}, "voxel_size": [40, 8, 8]}]
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    params = json.dumps({**TINY, "iterations": 2, "pixel_nm": 8, "model": {**TINY_MODEL, "synapses": False}})
    common = ["--params", params, "--device", "cpu", "--threads", "1", "--no-progress"]
    assert main(["train", "--sources", str(tmp_path / "sources.json"), "--out", str(tmp_path / "ck"), *common]) == 0
    _, meta = load_checkpoint(tmp_path / "ck")
    datasets = meta["training"]["data"]["datasets"]
    assert [d["shape"] for d in datasets] == [[10, 20, 20], [16, 128, 128]]
    assert [d["voxel_size"] for d in datasets] == [[40, 8, 8], [40, 8, 8]]
    assert "--sources" in meta["training"]["command"] and "gt.h5" in meta["training"]["command"]
    bad = json.dumps([{"volume": str(root), "phantom": {"seed": 1}}])
    assert main(["train", "--sources", bad, "--out", str(tmp_path / "x"), *common]) == 1
    assert main(["train", "--sources", "[1, 2]", "--out", str(tmp_path / "y"), *common]) == 1
