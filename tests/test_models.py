"""The U-Net's shape arithmetic and the checkpoint format's safety checks."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from connectomix.models import (Architecture, UNet, load_checkpoint, offset_name, read_checkpoint_meta,
                                save_checkpoint, sha256_file)

torch.set_num_threads(2)

TINY = dict(num_fmaps=4, fmap_inc_factor=2, downsample_factors=[[1, 2, 2], [2, 2, 2]],
            kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]])


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return UNet(Architecture.from_dict({**TINY, **overrides}))


@pytest.mark.parametrize("spec", [TINY, {}, dict(TINY, convs_per_level=1, upsample="nearest", norm="batch")])
def test_shape_arithmetic_matches_a_real_forward_pass(spec):
    arch = Architecture.from_dict(spec)
    model = UNet(arch).eval()
    ctx = arch.context
    out = arch.valid_output_shape((2, 8, 8) if spec else (1, 4, 4))
    inp = arch.input_shape(out)
    assert inp == tuple(o + 2 * c for o, c in zip(out, ctx))
    with torch.inference_mode():
        y = model(torch.zeros(1, 1, *inp))
    assert tuple(y.shape) == (1, arch.out_channels, *out)
    with pytest.raises(ValueError, match="not valid"):
        arch.output_shape(tuple(s + 1 for s in inp))


def test_default_architecture_is_anisotropic_and_small():
    arch = Architecture()
    assert arch.downsample_factors[0] == [1, 2, 2]
    assert arch.total_factor == (2, 8, 8)
    ctx = arch.context
    assert ctx[0] < ctx[1] == ctx[2]
    assert arch.affinity_channels == ["z", "y", "x"]
    assert offset_name([0, -3, 0]) == "aff_0_-3_0"


@pytest.mark.parametrize("bad, message", [
    ({"norm": "instance"}, "norm"),
    ({"kernel_sizes": [[1, 3, 3]]}, "kernel per level"),
    ({"kernel_sizes": [[1, 2, 3], [3, 3, 3], [3, 3, 3]]}, "odd"),
    ({"offsets": [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]}, "first three"),
    ({"bogus": 1}, "unknown architecture keys"),
    ({"num_fmaps": "12"}, "num_fmaps"),
])
def test_bad_architecture_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        Architecture.from_dict({**TINY, **bad})


def _save(tmp_path, model=None):
    model = model or tiny_model()
    save_checkpoint(tmp_path, model, {"iterations": 3, "training": {"data": "test"}, "validation": {"f1": 0.5}})
    return model


def test_checkpoint_roundtrip(tmp_path):
    model = _save(tmp_path)
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["iterations"] == 3 and meta["context"] == list(model.arch.context)
    assert meta["weights_sha256"] == sha256_file(tmp_path / "weights.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not loaded.training


def test_tampered_weights_fail_the_hash_check(tmp_path):
    _save(tmp_path)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(tmp_path)


def _rehash(tmp_path):
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    meta["weights_sha256"] = sha256_file(tmp_path / "weights.pt")
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))


def test_wrong_shapes_or_keys_fail_even_with_a_matching_hash(tmp_path):
    _save(tmp_path)
    other = tiny_model(num_fmaps=6)
    torch.save(other.state_dict(), tmp_path / "weights.pt")
    _rehash(tmp_path)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_checkpoint(tmp_path)
    state = tiny_model().state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "weights.pt")
    _rehash(tmp_path)
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_checkpoint(tmp_path)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    _save(tmp_path)
    canary = tmp_path / "pwned"
    with open(tmp_path / "weights.pt", "wb") as f:
        pickle.dump({"conv": _Evil(str(canary))}, f)
    _rehash(tmp_path)  # the attacker controls the JSON too
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        load_checkpoint(tmp_path)
    assert not canary.exists()
    # Also as a torch.save zip archive holding a code-carrying object.
    torch.save({"conv": _Evil(str(canary))}, tmp_path / "weights.pt")
    _rehash(tmp_path)
    with pytest.raises(ValueError, match="not a plain tensor state dict") as refused:
        load_checkpoint(tmp_path)
    assert not canary.exists()
    # the message says why it was refused and never passes on PyTorch's advice to load the file unsafely
    assert "can run code" in str(refused.value) and "weights_only=False" not in str(refused.value)
    assert "trust" not in str(refused.value)


def test_a_bare_weights_file_is_not_a_checkpoint(tmp_path):
    _save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"weights\.pt is a weights file, not a checkpoint: a checkpoint is "
                                                 r"a folder holding checkpoint\.json .* and weights\.pt"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match=r"a checkpoint is a folder holding checkpoint\.json"):
        load_checkpoint(tmp_path / "elsewhere")


def test_malformed_json_and_missing_keys(tmp_path):
    _save(tmp_path)
    good = (tmp_path / "checkpoint.json").read_text()
    (tmp_path / "checkpoint.json").write_text(good[:-20])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    meta = json.loads(good)
    del meta["weights_sha256"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing keys"):
        read_checkpoint_meta(tmp_path)
    meta = json.loads(good)
    meta["context"] = [0, 0, 0]
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="context"):
        load_checkpoint(tmp_path)
    meta = json.loads(good)
    meta["architecture"]["num_fmaps"] = -1
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_fmaps"):
        load_checkpoint(tmp_path)


def test_flop_count_agrees_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    arch = Architecture.from_dict(TINY)
    model = UNet(arch).eval()
    flops, voxels = arch.conv_flops_per_voxel((4, 16, 16))
    out = arch.valid_output_shape((4, 16, 16))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 1, *arch.input_shape(out)))
    assert voxels == int(np.prod(out))
    assert counter.get_total_flops() == pytest.approx(flops, rel=0.02)
