"""Self-supervised pretraining: the masked loss falls, a pretrained backbone starts a supervised model, CLI."""

import json

import h5py
import numpy as np
import pytest
import torch

from connectomix.cli import main
from connectomix.models import UNet, architecture_from_params, load_checkpoint
from connectomix.synthetic.training import synthetic_data
from connectomix.train import merge_params, train
from connectomix.train.pretrain import cube_mask, masked_batch, masked_loss, pretrain, raw_data

torch.set_num_threads(2)

TINY_MODEL = {"num_fmaps": 3, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2], [1, 2, 2]],
              "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3]]}
TINY = {"iterations": 2, "validate_every": 2, "checkpoint_every": 2, "output_shape": [2, 12, 12],
        "model": TINY_MODEL}
PRE = {**TINY, "pretrain": {"iterations": 4, "mask_size": [1, 4, 4]}}


@pytest.fixture(scope="module")
def volume():
    return synthetic_data((10, 40, 40), seed=0, cells=8)[0]


def test_cube_mask_masks_whole_cubes_at_the_fraction():
    mask = cube_mask((40, 64, 64), np.random.default_rng(0), 0.3, (4, 8, 8))
    assert 0.2 < mask.mean() < 0.4
    # one grid of cubes at one phase: the mask changes only between cubes, so every edge is a cube apart
    z, y, x = (np.flatnonzero(np.diff(mask.astype(int), axis=a).any(axis=tuple(b for b in range(3) if b != a)))
               for a in range(3))
    assert (np.diff(z) % 4 == 0).all() and (np.diff(y) % 8 == 0).all() and (np.diff(x) % 8 == 0).all()


def test_masked_batch_hides_the_masked_voxels_and_targets_the_clean_ones(volume):
    params = merge_params({**PRE, "pretrain": {"mask_size": [1, 4, 4], "mask_fill": "zero"}})
    arch = architecture_from_params(params["model"])
    out = arch.valid_output_shape(params["output_shape"])
    data = raw_data(volume.raw, volume.voxel_size)
    x, y, m = masked_batch(data, arch, out, params, np.random.default_rng(3))
    ctx = arch.context
    centre = x[:, :, ctx[0]:ctx[0] + out[0], ctx[1]:ctx[1] + out[1], ctx[2]:ctx[2] + out[2]]
    assert y.shape == m.shape == (1, 1, *out) and 0 < m.mean() < 1
    assert (centre[m == 1] == 0).all() and (centre[m == 0] == y[m == 0]).all()
    assert np.abs(y[m == 1]).max() > 0.1  # the target is the grey value that was hidden


def test_masked_loss_falls_on_a_small_volume(tmp_path):
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(10, 48, 48)), (1, 3, 3))
    raw = np.clip(128 + field / field.std() * 50, 0, 255).astype(np.uint8)  # smooth grey values: context helps
    params = {"output_shape": [4, 16, 16], "learning_rate": 3e-3, "checkpoint_every": 20,
              "model": {**TINY_MODEL, "num_fmaps": 8}, "pretrain": {"iterations": 40, "mask_size": [1, 2, 2]}}
    merged = merge_params(params)
    arch = architecture_from_params(merged["model"])
    out = arch.valid_output_shape(merged["output_shape"])
    data = raw_data(raw, (40, 8, 8))
    payload = pretrain(data, params, tmp_path / "pre", device="cpu", threads=1, progress=False)
    held_out = [masked_batch(data, arch, out, merged, np.random.default_rng([99, i])) for i in range(8)]
    torch.manual_seed(0)
    fresh = UNet(arch)  # the pretraining's own start (seed 0)
    model, meta = load_checkpoint(tmp_path / "pre")
    with torch.no_grad():
        before = np.mean([float(masked_loss(fresh, b)) for b in held_out])
        after = np.mean([float(masked_loss(model, b)) for b in held_out])
        # each batch's mean of the masked voxels: the best guess that uses no context
        flat = np.mean([float(((b[1] - b[1][b[2] == 1].mean()) ** 2 * b[2]).sum() / b[2].sum()) for b in held_out])
    assert after < 0.6 * before and after < 0.8 * flat, (before, after, flat)
    assert meta["pretrain"]["task"] == "masked reconstruction" and payload["iterations"] == 40
    assert [h["iteration"] for h in meta["loss_history"]] == [20, 40]
    assert meta["training"]["data"]["shape"] == [10, 48, 48]


def test_pretraining_resumes_exactly(tmp_path, volume):
    data = raw_data(volume.raw, volume.voxel_size)
    whole = pretrain(data, PRE, tmp_path / "whole", device="cpu", threads=1, progress=False)
    pretrain(data, {**PRE, "pretrain": {**PRE["pretrain"], "iterations": 2}}, tmp_path / "cut", device="cpu",
             threads=1, progress=False)
    resumed = pretrain(data, PRE, tmp_path / "cut", device="cpu", threads=1, progress=False)
    assert resumed["iterations"] == 4 and resumed["weights_sha256"] == whole["weights_sha256"]


def test_a_pretrained_backbone_starts_a_supervised_model(tmp_path, volume):
    pretrain(raw_data(volume.raw, volume.voxel_size), PRE, tmp_path / "pre", device="cpu", threads=1,
             progress=False)
    pre, _ = load_checkpoint(tmp_path / "pre")
    # the supervised model has another head (no synapse channels, one long-range offset): only the head differs
    model = {**TINY_MODEL, "synapses": False, "long_range_offsets": [[0, 0, -3]]}
    start = train(volume, {**TINY, "model": model, "iterations": 0, "init_from": str(tmp_path / "pre")},
                  tmp_path / "start", device="cpu", threads=1, progress=False)
    init, _ = load_checkpoint(tmp_path / "start")
    theirs, mine = pre.state_dict(), init.state_dict()
    backbone = [k for k in mine if not k.startswith("head.")]
    assert all(torch.equal(mine[k], theirs[k]) for k in backbone)
    assert mine["head.weight"].shape[0] == 4 and theirs["head.weight"].shape[0] == 6
    record = start["training"]["init"]
    assert record["pretrain"] is True and record["loaded"] == backbone
    assert record["reinitialized"] == ["head.weight", "head.bias"]
    # the same architecture as the pretraining: its head (a reconstruction) is still not taken
    same = train(volume, {**TINY, "iterations": 0, "init_from": str(tmp_path / "pre")}, tmp_path / "same",
                 device="cpu", threads=1, progress=False)
    same_model, _ = load_checkpoint(tmp_path / "same")
    assert not torch.equal(same_model.state_dict()["head.weight"], theirs["head.weight"])
    assert same["training"]["init"]["reinitialized"] == ["head.weight", "head.bias"]
    # fine-tuning runs and moves the weights
    tuned = train(volume, {**TINY, "model": model, "init_from": str(tmp_path / "pre")}, tmp_path / "tuned",
                  device="cpu", threads=1, progress=False)
    assert tuned["iterations"] == 2 and tuned["weights_sha256"] != start["weights_sha256"]
    assert tuned["training"]["init"] == record


def test_init_from_a_different_backbone_is_refused(tmp_path, volume):
    pretrain(raw_data(volume.raw, volume.voxel_size), PRE, tmp_path / "pre", device="cpu", threads=1,
             progress=False)
    other = {**TINY, "model": {**TINY_MODEL, "num_fmaps": 4}, "init_from": str(tmp_path / "pre")}
    with pytest.raises(ValueError, match="init_from .*architecture differs from train.model .beyond the output head"):
        train(volume, other, tmp_path / "bad", device="cpu", threads=1, progress=False)


def test_cli_pretrains_on_raw_files_and_writes_a_loadable_checkpoint(tmp_path, volume, capsys):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["em"] = volume.raw
    np.save(tmp_path / "b.npy", volume.raw[:, ::-1])
    params = json.dumps(PRE)
    args = ["pretrain", "--raw", f"{tmp_path / 'a.h5'}:em", str(tmp_path / "b.npy"), "--out", str(tmp_path / "ck"),
            "--params", params, "--threads", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 1  # no voxel size for files that do not carry one
    assert "give its voxel size with --voxel-size" in capsys.readouterr().err
    assert main(args + ["--voxel-size", "40", "8", "8"]) == 0
    model, meta = load_checkpoint(tmp_path / "ck")
    assert meta["iterations"] == 4 and "pretrain" in meta and meta["input_normalization"]["method"] == "fixed"
    assert [d["raw"] for d in meta["training"]["data"]["datasets"]] == [f"{tmp_path / 'a.h5'}:em",
                                                                          str(tmp_path / "b.npy")]
    assert "python -m connectomix pretrain --raw" in meta["training"]["command"]
