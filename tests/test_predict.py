"""Blockwise inference: mirrored reads, seamless tiling, the zarr outputs and the CLI actions."""

import json

import numpy as np
import pytest
import torch

from connectomix import io
from connectomix.blocks import BlockGrid
from connectomix.cli import main
from connectomix.models import Architecture, UNet, save_checkpoint
from connectomix.predict import (
    Predictor, _augment, _deaugment, _unshift, augment_variants, predict_volume, quantize, transposed_channels,
)

torch.set_num_threads(2)

TINY = dict(num_fmaps=4, fmap_inc_factor=2, downsample_factors=[[1, 2, 2], [2, 2, 2]],
            kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]])


def _model(seed=0):
    """A random net whose deep (pooled) paths matter: He init keeps activations alive through every level."""
    torch.manual_seed(seed)
    model = UNet(Architecture.from_dict(TINY)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                torch.nn.init.normal_(module.bias, std=0.1)
        # scale the head so logits spread over about +-3 on EM-like input (probabilities use the whole range)
        shape = model.arch.input_shape(model.arch.valid_output_shape((4, 16, 16)))
        x = torch.from_numpy(_raw(shape, seed=99)).float()[None, None] / 127.5 - 1
        spread = model(x).std()
        model.head.weight.mul_(1.5 / spread)
        model.head.bias.zero_()
    return model


def _raw(shape=(16, 64, 64), seed=0):
    from connectomix.synthetic.training import synthetic_data

    return synthetic_data(shape, seed=seed)[0].raw


def test_affinities_are_zero_where_the_neighbour_is_outside():
    raw = _raw((8, 32, 32))
    aff, syn = predict_volume(_model(), raw)
    assert aff.shape == (3, 8, 32, 32) and syn.shape == (3, 8, 32, 32)
    assert (aff[0, 0] == 0).all() and (aff[1, :, 0] == 0).all() and (aff[2, :, :, 0] == 0).all()
    assert aff[0, 1:].max() > 0.1 and aff[2, :, :, 1:].min() < 0.9


def test_blockwise_prediction_is_seamless():
    """>= 8 blocks (edge blocks partial, several tiles each) equal one whole-volume pass within one uint8 step."""
    model = _model()
    raw = _raw((16, 64, 64), seed=3)
    whole = quantize(Predictor(model, tile_shape=(64, 256, 256)).predict(raw, (0, 0, 0), raw.shape))
    grid = BlockGrid(raw.shape, (8, 24, 24), model.arch.context, (8, 8, 8))
    assert len(grid) >= 8
    blockwise = np.zeros_like(whole)
    predictor = Predictor(model, batch_size=3, tile_shape=(2, 8, 8))
    for block in grid:
        # A block only sees its read ROI (clipped to the volume), as a zarr job does.
        source = np.zeros_like(raw)
        source[block.read.slices] = raw[block.read.slices]
        out = predictor.predict(source, block.write.offset, block.write.shape, raw.shape)
        blockwise[(slice(None),) + block.write.slices] = quantize(out)
    diff = np.abs(blockwise.astype(int) - whole.astype(int))
    assert diff.max() <= 1, f"blockwise differs from whole-volume by up to {diff.max()}"
    assert whole.std() > 10  # the comparison is not between constant maps


def _blockwise(model, raw, block_shape, tile_shape=(2, 8, 8)):
    grid = BlockGrid(raw.shape, block_shape, model.arch.context)
    predictor = Predictor(model, batch_size=3, tile_shape=tile_shape)
    out = np.zeros((model.arch.out_channels, *raw.shape), dtype=np.uint8)
    for block in grid:
        out[(slice(None),) + block.write.slices] = quantize(
            predictor.predict(raw, block.write.offset, block.write.shape, raw.shape))
    return out


def test_tiles_off_the_pooling_lattice_would_not_be_seamless(monkeypatch):
    """The seamless check has teeth: ignoring the pooling lattice (blocks not on multiples of 4 in-plane) shows."""
    model = _model()
    raw = _raw((16, 64, 64), seed=3)
    whole = quantize(Predictor(model, tile_shape=(64, 256, 256)).predict(raw, (0, 0, 0), raw.shape))
    aligned = _blockwise(model, raw, (8, 18, 18), tile_shape=(8, 24, 24))  # offsets 18, 36, 54: not on the lattice
    assert np.abs(aligned.astype(int) - whole.astype(int)).max() <= 1
    original = Predictor._tiles

    def unaligned(self, offset, shape):
        factor, self.factor = self.factor, (1, 1, 1)
        try:
            return original(self, offset, shape)
        finally:
            self.factor = factor

    monkeypatch.setattr(Predictor, "_tiles", unaligned)
    broken = _blockwise(model, raw, (8, 18, 18), tile_shape=(8, 24, 24))
    assert np.abs(broken.astype(int) - whole.astype(int)).max() > 5


def _volume(tmp_path, raw):
    root = tmp_path / "volume.zarr"
    io.write_full(root, "raw", raw, (8, 32, 32), (40, 8, 8))
    return root


class _LabelAffinities(torch.nn.Module):
    """A stand-in network that is exactly flip- and transpose-equivariant: affinity logit +-10 for equal / unequal
    input values across each offset, and the input itself as every voxel-wise channel."""

    def __init__(self, offsets):
        super().__init__()
        self.arch = Architecture.from_dict({**TINY, "offsets": offsets})

    def forward(self, x):
        cz, cy, cx = self.arch.context
        z, y, x_ = x.shape[2] - 2 * cz, x.shape[3] - 2 * cy, x.shape[4] - 2 * cx
        centre = x[:, :, cz:cz + z, cy:cy + y, cx:cx + x_]
        affs = []
        for oz, oy, ox in self.arch.offsets:
            other = x[:, :, cz + oz:cz + oz + z, cy + oy:cy + oy + y, cx + ox:cx + ox + x_]
            affs.append(torch.where(centre == other, 10.0, -10.0))
        return torch.cat(affs + [centre] * len(self.arch.synapse_channels), 1)


def _blocky(shape, seed):
    """uint8 volume of random boxes (labels as intensities): many equal and unequal neighbours."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.uint8)
    for _ in range(60):
        lo = [int(rng.integers(0, s)) for s in shape]
        size = [int(rng.integers(1, 4)), int(rng.integers(2, 20)), int(rng.integers(2, 20))]
        out[tuple(slice(a, a + b) for a, b in zip(lo, size))] = rng.integers(1, 255)
    return out


def test_augmentation_maps_flipped_affinities_back_to_their_edges():
    """For every in-plane variant: affinities of the augmented labels, undone (_deaugment, _unshift), equal the
    affinities of the labels, long-range offsets included."""
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0], [0, 0, -3], [-2, 0, 0], [0, 2, 0], [0, 0, 2]]
    labels = _blocky((4, 24, 24), seed=1)

    def affs(lab):  # (c, z, y, x): lab[v] == lab[v + o], 0 where v + o is outside
        out = np.zeros((len(offsets), *lab.shape), np.float32)
        for c, o in enumerate(offsets):
            here = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(o, lab.shape))
            there = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(o, lab.shape))
            out[c][here] = lab[here] == lab[there]
        return out

    expected = affs(labels)
    order = transposed_channels(offsets, len(offsets))
    assert order == [0, 2, 1, 4, 3, 5, 7, 6]
    variants = augment_variants("in-plane")
    assert len(variants) == 8 and len(set(variants)) == 8 and len(augment_variants("in-plane", False)) == 4
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # edges whose both ends stay inside
    for variant in variants:
        undone = np.ascontiguousarray(_deaugment(affs(_augment(labels, variant))[None], variant, order)[0])
        back = _unshift(undone, offsets, variant[:2])
        assert np.array_equal(back[inner], expected[inner]), variant
        if any(variant[:2]):  # without the shift the flipped pass is off by an edge
            assert not np.array_equal(undone[inner], expected[inner]), variant
    with pytest.raises(ValueError, match="y/x mirror"):
        transposed_channels([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0]], 4)
    with pytest.raises(ValueError, match="along one axis"):
        Predictor(_LabelAffinities([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -1, -1]]), augment="in-plane")
    with pytest.raises(ValueError, match="predict.augment"):
        augment_variants("all")


def test_augmented_prediction_of_an_equivariant_network_equals_one_pass():
    """Through the predictor (tiles, context, padding, crop, borders): the mean of the 8 passes of an exactly
    equivariant network is its single pass, in one box and in blocks whose read ROIs end inside the volume."""
    model = _LabelAffinities([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -2, 0], [0, 0, -2]])
    raw = _blocky((8, 48, 48), seed=2)
    one = Predictor(model, tile_shape=(8, 20, 20)).predict(raw, (0, 0, 0), raw.shape)
    assert 0.2 < one[:5].mean() < 0.95  # both equal and unequal neighbours
    augmented = Predictor(model, tile_shape=(8, 20, 20), augment="in-plane")
    np.testing.assert_allclose(augmented.predict(raw, (0, 0, 0), raw.shape), one, rtol=0, atol=1e-6)  # float sums
    grid = BlockGrid(raw.shape, (8, 16, 24), model.arch.context, (8, 8, 8))
    for block in grid:
        out = augmented.predict(raw, block.write.offset, block.write.shape, raw.shape)
        np.testing.assert_allclose(out, one[(slice(None),) + block.write.slices], rtol=0, atol=1e-6, err_msg=block.id)


def test_augmented_blockwise_prediction_is_seamless():
    """Test-time augmentation keeps blocks seamless: every pass's tiles stay on the pooling lattice."""
    model = _model()
    raw = _raw((16, 64, 64), seed=3)
    whole = quantize(Predictor(model, tile_shape=(64, 256, 256), augment="in-plane").predict(raw, (0, 0, 0),
                                                                                            raw.shape))
    plain = quantize(Predictor(model, tile_shape=(64, 256, 256)).predict(raw, (0, 0, 0), raw.shape))
    assert np.abs(whole.astype(int) - plain.astype(int)).mean() > 1  # the passes differ for a real network
    grid = BlockGrid(raw.shape, (8, 24, 24), model.arch.context, (8, 8, 8))
    predictor = Predictor(model, batch_size=3, tile_shape=(2, 8, 8), augment="in-plane")
    blockwise = np.zeros_like(whole)
    for block in grid:
        source = np.zeros_like(raw)
        source[block.read.slices] = raw[block.read.slices]
        out = predictor.predict(source, block.write.offset, block.write.shape, raw.shape)
        blockwise[(slice(None),) + block.write.slices] = quantize(out)
    assert np.abs(blockwise.astype(int) - whole.astype(int)).max() <= 1


def _cli_setup(tmp_path, raw, **params):
    """A volume holding ``raw``, a saved random model and `predict setup` run on them (``params``: tile_shape,
    augment): (root, model, work dir, markers)."""
    root = _volume(tmp_path, raw)
    model = _model()
    ck = tmp_path / "ck"
    save_checkpoint(ck, model, {"iterations": 1})
    work = tmp_path / "predict"
    assert main(["predict", "setup", "--volume", str(root), "--work-dir", str(work), "--params",
                 json.dumps({"checkpoint": str(ck), **params}), "--block-shape", "8", "32", "32",
                 "--chunk-shape", "8", "32", "32"]) == 0
    return root, model, work, tmp_path / "blocks" / "predict"


def test_cli_setup_block_finish(tmp_path, capsys):
    raw = _raw((16, 64, 64), seed=5)
    root, model, work, markers = _cli_setup(tmp_path, raw, tile_shape=[4, 16, 16])
    setup = json.loads((work / "setup.json").read_text())
    assert setup["params"] == {"checkpoint": str(tmp_path / "ck"), "tile_shape": [4, 16, 16], "augment": "none"}
    assert setup["halo"] == list(model.arch.context) and setup["marker_dir"] == str(tmp_path / "blocks")
    meta = io.read_meta(root, "affinities")
    assert meta.shape == (3, 16, 64, 64) and meta.channels == ("z", "y", "x")
    assert meta.attrs["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert meta.attrs["scale"] == pytest.approx(1 / 255)
    assert io.read_meta(root, "synapse_maps").channels == ("cleft", "pre", "post")
    grid = BlockGrid(raw.shape, (8, 32, 32), model.arch.context, (8, 32, 32))
    ids = grid.ids()
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", *ids[:4], "--device", "cpu",
                 "--threads", "1", "--batch-size", "2"]) == 0
    # finish refuses while blocks are missing
    capsys.readouterr()
    assert main(["predict", "finish", "--work-dir", str(work), "--summary", str(tmp_path / "predict.json")]) == 1
    assert "4 of 8 blocks have no marker of `connectomix predict block --step predict`" in capsys.readouterr().err
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", *ids[4:], "--device", "cpu",
                 "--threads", "1"]) == 0
    marker = json.loads((markers / f"{ids[0]}.json").read_text())
    assert marker["block"] == ids[0] and marker["write_shape"] == [8, 32, 32]
    assert marker["seconds"] > 0 and marker["peak_rss_mb"] > 0
    assert main(["predict", "finish", "--work-dir", str(work), "--summary", str(tmp_path / "predict.json"),
                 "--pyramid-levels", "2"]) == 0
    summary = json.loads((tmp_path / "predict.json").read_text())
    assert summary["blocks"] == 8 and summary["voxels"] == raw.size
    assert summary["checkpoint"] == str(tmp_path / "ck")
    assert io.read_meta(root, "affinities").levels == 2
    aff = io.open_array(root, "affinities")[...]
    whole_aff, whole_syn = predict_volume(model, raw)
    assert np.abs(aff.astype(int) - quantize(whole_aff).astype(int)).max() <= 1
    syn = io.open_array(root, "synapse_maps")[...]
    assert np.abs(syn.astype(int) - quantize(whole_syn).astype(int)).max() <= 1


def test_affinity_channels_training_never_taught_are_written_as_no_link(tmp_path):
    """A model trained on per-section labels only has untrained z affinities: predict writes them as 0, so
    agglomeration never links sections on noise; the in-plane channels are as predicted."""
    raw = _raw((8, 64, 64), seed=7)
    root = _volume(tmp_path, raw)
    model = _model()
    save_checkpoint(tmp_path / "ck", model, {"iterations": 1, "untrained_affinities": [0]})
    work = tmp_path / "predict"
    assert main(["predict", "setup", "--volume", str(root), "--work-dir", str(work), "--params",
                 json.dumps({"checkpoint": str(tmp_path / "ck")}), "--block-shape", "8", "32", "32",
                 "--chunk-shape", "8", "32", "32"]) == 0
    ids = BlockGrid(raw.shape, (8, 32, 32), model.arch.context, (8, 32, 32)).ids()
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", *ids, "--device", "cpu",
                 "--threads", "1"]) == 0
    aff = io.open_array(root, "affinities")[...]
    whole = quantize(predict_volume(model, raw)[0])
    assert not aff[0].any() and whole[0].any()
    assert np.abs(aff[1:].astype(int) - whole[1:3].astype(int)).max() <= 1


def test_cli_blocks_with_test_time_augmentation_equal_the_augmented_whole_volume(tmp_path):
    raw = _raw((8, 64, 64), seed=6)
    root, model, work, markers = _cli_setup(tmp_path, raw, augment="in-plane")
    ids = BlockGrid(raw.shape, (8, 32, 32), model.arch.context, (8, 32, 32)).ids()
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", *ids, "--device", "cpu",
                 "--threads", "1"]) == 0
    assert json.loads((markers / f"{ids[0]}.json").read_text())["augment_passes"] == 8
    whole_aff, _ = predict_volume(model, raw, augment="in-plane")
    aff = io.open_array(root, "affinities")[...]
    assert np.abs(aff.astype(int) - quantize(whole_aff).astype(int)).max() <= 1


def test_block_with_a_bad_id_is_a_clear_error(tmp_path, capsys):
    raw = _raw((8, 32, 32))
    _, _, work, _ = _cli_setup(tmp_path, raw)
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", "z5_y0_x0", "--device", "cpu"]) == 1
    assert "outside the grid" in capsys.readouterr().err


def test_setup_needs_a_checkpoint_and_blocks_use_the_checkpoint_it_recorded(tmp_path, capsys):
    raw = _raw((8, 32, 32))
    root, _, work, _ = _cli_setup(tmp_path, raw)
    capsys.readouterr()
    assert main(["predict", "setup", "--volume", str(root), "--work-dir", str(work), "--params", "{}",
                 "--block-shape", "8", "32", "32"]) == 1
    assert "give checkpoint" in capsys.readouterr().err
    save_checkpoint(tmp_path / "ck", _model(seed=1), {"iterations": 1})  # other weights after setup
    assert main(["predict", "block", "--work-dir", str(work), "--blocks", "z0_y0_x0", "--device", "cpu"]) == 1
    assert "changed since predict setup" in capsys.readouterr().err


def test_percentile_normalization_makes_a_contrast_change_invisible_to_the_model(tmp_path):
    """A checkpoint with percentile input normalization sees the same input for a volume whose grey values were
    squeezed into 49..209 (another microscope): predict setup records each volume's range, blocks apply it."""
    from connectomix.models import input_normalization, input_range, normalize_raw

    raw = _raw((8, 64, 64), seed=7)
    squeezed = np.rint(49 + raw.astype(np.float32) * (160 / 255)).astype(np.uint8)
    spec = input_normalization({"input_normalization": {"method": "percentile", "percentiles": [1, 99]}})
    lo, hi = input_range(raw, spec)
    lo2, hi2 = input_range(squeezed, spec)
    assert lo2 == pytest.approx(49 + lo * 160 / 255, abs=1) and hi2 == pytest.approx(49 + hi * 160 / 255, abs=1)
    a, b = normalize_raw(raw, (lo, hi)).numpy(), normalize_raw(squeezed, (lo2, hi2)).numpy()
    one_level = 2 * (255 / 160) / (hi - lo)  # one grey level of the squeezed volume, in network units
    assert a.min() == -1 and a.max() == 1 and np.abs(a - b).max() <= one_level
    assert input_range(np.full(100, 7), spec) == (0.0, 255.0)  # a flat volume: nothing to stretch
    with pytest.raises(ValueError, match="percentiles"):
        input_normalization({"input_normalization": {"method": "percentile", "percentiles": [99, 1]}})

    model = _model()
    model.input_normalization = spec
    outputs = {}
    for name, volume in (("original", raw), ("squeezed", squeezed)):
        root = _volume(tmp_path / name, volume)
        save_checkpoint(tmp_path / name / "ck", model, {"iterations": 1})
        work = tmp_path / name / "predict"
        assert main(["predict", "setup", "--volume", str(root), "--work-dir", str(work), "--params",
                     json.dumps({"checkpoint": str(tmp_path / name / "ck"), "tile_shape": [4, 16, 16]}),
                     "--block-shape", "8", "32", "32", "--chunk-shape", "8", "32", "32"]) == 0
        setup = json.loads((work / "setup.json").read_text())
        assert setup["input_range"] == pytest.approx(input_range(volume, spec), abs=0.01)
        ids = BlockGrid(volume.shape, (8, 32, 32), model.arch.context, (8, 32, 32)).ids()
        assert main(["predict", "block", "--work-dir", str(work), "--blocks", *ids, "--device", "cpu",
                     "--threads", "1"]) == 0
        outputs[name] = io.open_array(root, "affinities")[...].astype(int)
        whole, _ = predict_volume(model, volume)  # the in-memory path normalizes the same way
        assert np.abs(outputs[name] - quantize(whole).astype(int)).max() <= 1
    diff = np.abs(outputs["original"] - outputs["squeezed"])
    assert np.median(diff) <= 2 and np.mean(diff) < 4  # rounding of the squeezed grey values only
    # The fixed map (checkpoints without the field) does see the change.
    fixed = np.abs(quantize(predict_volume(_model(), raw)[0]).astype(int)
                   - quantize(predict_volume(_model(), squeezed)[0]).astype(int))
    assert fixed.mean() > 3 * diff.mean()
