"""Training the U-Net on ground truth: targets, augmentation, class-balanced loss, validation, checkpoints.

Targets (all from ground truth, see :func:`affinity_targets` and :func:`synapse_targets`):

* affinity for offset o at voxel v: 1 when v and v + o carry the same non-zero label (masked where v + o is
  outside the (sub)volume);
* ``cleft``: voxels of ``gt/clefts`` (> 0);
* ``pre`` / ``post``: voxels of the synapse's pre (post) object within ``pre_post_distance_nm`` of its cleft;
  with ``partner_zone_nm`` their loss counts only within that distance of a cleft (see :func:`partner_zone`).

Augmentation works on the raw *and label* crops together (in-plane flips, 90-degree rotations, z flip,
misalignment, elastic deformation); targets are computed from the augmented labels, so affinity channels stay
consistent with the image by construction (tests check the channel permutation explicitly). Intensity, contrast,
noise and missing sections change only the raw.

Determinism: weights are initialised from ``seed``; iteration ``i`` draws its samples from
``numpy.random.default_rng([seed, i])``, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from connectomix import config
from connectomix.evaluate.synapses import cleft_object_prf  # noqa: F401 (also for benchmarks)
from connectomix.predict import read_padded


def merge_params(params: dict | None) -> dict:
    """The `train` config section's defaults (from the schema) overlaid with ``params``, without the workflow's
    keys (enabled, dataset, device, threads, gpu); unknown keys raise ``ValueError``."""
    merged = config.resolve("train", params, omit=("enabled", "dataset", "device", "threads", "gpu"))
    zone = merged["partner_zone_nm"]
    if zone is not None and not (isinstance(zone, (int, float)) and zone > 0):
        raise ValueError(f"train parameter partner_zone_nm must be null or a distance > 0 nm, got {zone!r}")
    return merged


def architecture_from_params(model: dict):
    """The :class:`~connectomix.models.Architecture` described by the `train.model` config section."""
    from connectomix.models import NEAREST_OFFSETS, SYNAPSE_CHANNELS, Architecture

    return Architecture.from_dict({
        "num_fmaps": model["num_fmaps"],
        "fmap_inc_factor": model["fmap_inc_factor"],
        "downsample_factors": [list(f) for f in model["downsample_factors"]],
        "kernel_sizes": [list(k) for k in model["kernel_sizes"]],
        "convs_per_level": model["convs_per_level"],
        "norm": model["norm"],
        "upsample": model["upsample"],
        "offsets": [list(o) for o in NEAREST_OFFSETS] + [list(o) for o in model["long_range_offsets"]],
        "synapse_channels": list(SYNAPSE_CHANNELS) if model["synapses"] else [],
    })


# --- targets -------------------------------------------------------------------------------------------------


def affinity_targets(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(affinities, mask), both bool (len(offsets), z, y, x).

    ``aff[c, v]`` is True when ``labels[v] != 0`` and ``labels[v] == labels[v + offsets[c]]``;
    ``mask[c, v]`` is False where ``v + offsets[c]`` falls outside the array (no target there).
    """
    shape = labels.shape
    aff = np.zeros((len(offsets), *shape), dtype=bool)
    mask = np.zeros((len(offsets), *shape), dtype=bool)
    for c, o in enumerate(offsets):
        src, dst = [], []
        for d, n in zip(o, shape):
            d = int(d)
            if abs(d) >= n:
                src = None
                break
            # v in [max(0, -d), n - max(0, d)); neighbour v + d
            src.append(slice(max(0, -d), n - max(0, d)))
            dst.append(slice(max(0, -d) + d, n - max(0, d) + d))
        if src is None:
            continue
        a, b = labels[tuple(src)], labels[tuple(dst)]
        aff[c][tuple(src)] = (a != 0) & (a == b)
        mask[c][tuple(src)] = True
    return aff, mask


def synapse_targets(labels: np.ndarray, clefts: np.ndarray, synapses, voxel_size: Sequence[float],
                    distance_nm: float = 80.0, cleft_radius_nm: float = 0.0) -> np.ndarray:
    """bool (3, z, y, x): cleft, pre, post.

    ``cleft`` is the cleft voxels grown by ``cleft_radius_nm`` (Euclidean, anisotropic; 0: as labelled), a
    thicker target that tolerates a voxel of misplacement. ``synapses`` is a table (DataFrame or dict of columns)
    with ``id`` (cleft label), ``pre`` and ``post`` (label ids). ``pre`` marks voxels of the pre object within
    ``distance_nm`` of that synapse's (ungrown) cleft voxels; ``post`` likewise. Synapses missing from ``clefts``
    are skipped.
    """
    from scipy import ndimage

    out = np.zeros((3, *labels.shape), dtype=bool)
    out[0] = clefts > 0
    if cleft_radius_nm > 0 and out[0].any():
        reach = [int(cleft_radius_nm // v) for v in voxel_size]
        offsets = np.indices([2 * r + 1 for r in reach]).reshape(3, -1).T - reach
        ball = (np.linalg.norm(offsets * np.asarray(voxel_size, float), axis=1) <= cleft_radius_nm)
        out[0] = ndimage.binary_dilation(out[0], structure=ball.reshape([2 * r + 1 for r in reach]))
    if synapses is None or len(synapses["id"]) == 0 or not out[0].any():
        return out
    ids, inverse = np.unique(clefts, return_inverse=True)
    inverse = inverse.reshape(clefts.shape)
    boxes = ndimage.find_objects(inverse.astype(np.int32))  # box i-1 belongs to ids[i]
    row_of = {int(i): k for k, i in enumerate(ids)}
    grow = [int(math.ceil(distance_nm / v)) for v in voxel_size]
    for sid, pre, post in zip(synapses["id"], synapses["pre"], synapses["post"]):
        k = row_of.get(int(sid))
        if not k:  # absent or background
            continue
        box = boxes[k - 1]
        sl = tuple(slice(max(0, s.start - g), min(n, s.stop + g)) for s, g, n in zip(box, grow, labels.shape))
        cleft = inverse[sl] == k
        dist = ndimage.distance_transform_edt(~cleft, sampling=voxel_size)
        near = dist <= distance_nm
        lab = labels[sl]
        if int(pre):
            out[1][sl] |= near & (lab == pre)
        if int(post):
            out[2][sl] |= near & (lab == post)
    return out


# --- augmentation --------------------------------------------------------------------------------------------


def _geometric(arrays: list[np.ndarray], k: int, flip_y: bool, flip_x: bool, flip_z: bool) -> list[np.ndarray]:
    """The same in-plane rotation (k x 90 degrees) and flips applied to centred, square (y == x) arrays."""
    out = []
    for a in arrays:
        if flip_z:
            a = a[..., ::-1, :, :]
        if flip_y:
            a = a[..., ::-1, :]
        if flip_x:
            a = a[..., ::-1]
        if k:
            a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a))
    return out


def _elastic(arrays: list[np.ndarray], orders: list[int], rng, sigma: float, magnitude: float) -> list[np.ndarray]:
    """One smooth random in-plane displacement field (same for all sections), applied to centred arrays."""
    from scipy import ndimage

    big = max(a.shape[-1] for a in arrays)
    field = [ndimage.gaussian_filter(rng.standard_normal((big, big)), sigma) for _ in range(2)]
    norm = max(np.abs(field[0]).max(), np.abs(field[1]).max(), 1e-6)
    field = [f / norm * magnitude for f in field]
    out = []
    for a, order in zip(arrays, orders):
        n = a.shape[-1]
        c = (big - n) // 2
        dy, dx = (f[c:c + n, c:c + n] for f in field)
        yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        coords = [yy + dy, xx + dx]
        res = np.empty_like(a)
        for z in range(a.shape[0]):
            res[z] = ndimage.map_coordinates(a[z], coords, order=order, mode="mirror")
        out.append(res)
    return out


@dataclass
class TrainData:
    """In-memory training volume: raw uint8 (z, y, x), labels (0 = background / boundary), optional synapse masks.

    ``synapse`` is bool (3, z, y, x) (cleft, pre, post) or None; ``synapse_valid`` says which of the three
    channels have ground truth (e.g. clefts only for vnc-sstem). ``per_section``: the labels are 2D instances per
    section (their ids say nothing across sections), so affinities with a z component get no target.
    """

    raw: np.ndarray
    labels: np.ndarray
    voxel_size: tuple
    synapse: np.ndarray | None = None
    synapse_valid: tuple = (True, True, True)
    description: dict | None = None
    per_section: bool = False

    def slab(self, z0: int, z1: int) -> "TrainData":
        syn = None if self.synapse is None else self.synapse[:, z0:z1]
        return TrainData(self.raw[z0:z1], self.labels[z0:z1], self.voxel_size, syn, self.synapse_valid,
                         self.description, self.per_section)

    def affinity_targets(self, labels: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """:func:`affinity_targets` of ``labels`` (this data's or a patch of them), z channels masked when the
        labels are per section."""
        aff, mask = affinity_targets(labels, offsets)
        if self.per_section:
            mask[[c for c, o in enumerate(offsets) if int(o[0]) != 0]] = False
        return aff, mask


def sample_batch(data: TrainData, arch, output_shape, batch_size: int, rng, params: dict):
    """A training batch: (raw float32 (N, 1, *in), targets float32 (N, C, *out), mask float32 (N, C, *out))."""
    aug = params["augment"]
    ctx = arch.context
    out_shape = tuple(output_shape)
    in_shape = tuple(o + 2 * c for o, c in zip(out_shape, ctx))
    offsets = arch.offsets
    margin = [max(abs(int(o[a])) for o in offsets) for a in range(3)]
    lab_shape = tuple(o + 2 * m for o, m in zip(out_shape, margin))
    n_syn = len(arch.synapse_channels)
    vol = data.raw.shape
    raws, targets, masks = [], [], []
    clefts = None
    if data.synapse is not None and n_syn and params["synapse_sample_prob"] > 0:
        clefts = np.argwhere(data.synapse[0])
    for _ in range(batch_size):
        # Output box start (z, y, x), anywhere inside the volume (inputs mirror beyond the border).
        if clefts is not None and len(clefts) and rng.random() < params["synapse_sample_prob"]:
            centre = clefts[rng.integers(len(clefts))]
            start = [int(np.clip(c - o // 2 + rng.integers(-o // 4, o // 4 + 1), 0, max(0, n - o)))
                     for c, o, n in zip(centre, out_shape, vol)]
        else:
            start = [int(rng.integers(0, max(1, n - o + 1))) for o, n in zip(out_shape, vol)]
        shifts = None
        if rng.random() < aug["misalign_prob"] and aug["misalign_max_shift"] > 0:
            s = int(aug["misalign_max_shift"])
            shifts = np.zeros((in_shape[0], 2), dtype=int)
            cut = int(rng.integers(1, in_shape[0]))
            delta = rng.integers(-s, s + 1, size=2)
            if rng.random() < 0.5:
                shifts[cut:] = delta  # a shifted stack
            else:
                shifts[cut] = delta  # one slipped section
        raw = read_padded(data.raw, [a - c for a, c in zip(start, ctx)], in_shape, vol, shifts)
        lab_start = [a - m for a, m in zip(start, margin)]
        lab_shifts = None if shifts is None else shifts[ctx[0] - margin[0]:ctx[0] - margin[0] + lab_shape[0]]
        labels = read_padded(data.labels, lab_start, lab_shape, vol, lab_shifts)
        fields = [raw, labels]
        if data.synapse is not None:
            for c in range(3):
                fields.append(read_padded(data.synapse[c], lab_start, lab_shape, vol, lab_shifts))
        # Mask of labels really inside the volume (mirrored margins carry no targets).
        inside = np.ones(lab_shape, dtype=bool)
        for axis in range(3):
            coords = np.arange(lab_start[axis], lab_start[axis] + lab_shape[axis])
            bad = (coords < 0) | (coords >= vol[axis])
            index = [slice(None)] * 3
            index[axis] = bad
            inside[tuple(index)] = False
        fields.append(inside)
        k = int(rng.integers(4)) if aug["rotate"] else 0
        flips = [bool(rng.integers(2)) for _ in range(3)] if aug["flip"] else [False] * 3
        fields = _geometric(fields, k, *flips)
        if aug["elastic"]:
            orders = [1] + [0] * (len(fields) - 1)
            fields = _elastic(fields, orders, rng, aug["elastic_sigma"], aug["elastic_magnitude"])
        raw, labels, inside = fields[0], fields[1], fields[-1]
        raw = _intensity(raw, rng, aug)
        aff, aff_mask = data.affinity_targets(labels, offsets)
        # Mask affinities touching a mirrored voxel at either end.
        ends = affinity_targets(inside.astype(np.uint8), offsets)[0]
        aff_mask &= ends
        crop = tuple(slice(m, m + o) for m, o in zip(margin, out_shape))
        target = [aff[(slice(None),) + crop]]
        mask = [aff_mask[(slice(None),) + crop]]
        if n_syn:
            if data.synapse is not None:
                syn = np.stack(fields[2:5])[(slice(None),) + crop]
                valid = np.array(data.synapse_valid, dtype=bool)[:, None, None, None] & inside[crop][None]
                if params["partner_zone_nm"] is not None:  # fields[2]: the (augmented) cleft target
                    valid[1:] &= partner_zone(fields[2], data.voxel_size, params["partner_zone_nm"])[crop]
            else:
                syn = np.zeros((3, *out_shape), dtype=bool)
                valid = np.zeros((3, *out_shape), dtype=bool)
            target.append(syn)
            mask.append(np.broadcast_to(valid, syn.shape))
        raws.append(raw)
        targets.append(np.concatenate(target))
        masks.append(np.concatenate(mask))
    return (np.stack(raws)[:, None].astype(np.float32), np.stack(targets).astype(np.float32),
            np.stack(masks).astype(np.float32))


def learning_rate(params: dict, iteration: int) -> float:
    """The learning rate at 0-based ``iteration``: ``constant``, or ``cosine`` from ``learning_rate`` down to
    ``learning_rate * min_lr_fraction`` at the last of ``iterations`` (a function of the iteration alone, so a
    resumed run follows the same schedule)."""
    base = float(params["learning_rate"])
    schedule = params["lr_schedule"]
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    low = base * float(params["min_lr_fraction"])
    progress = iteration / max(1, int(params["iterations"]) - 1)
    return low + 0.5 * (base - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def partner_zone(cleft: np.ndarray, voxel_size: Sequence[float], distance_nm: float) -> np.ndarray:
    """Voxels within ``distance_nm`` of a cleft voxel (bool, same shape; Euclidean, anisotropic).

    With ``partner_zone_nm`` the pre/post channels are trained and validated only there: they learn which side
    of a cleft is which (vesicles vs density), while finding clefts is the cleft channel's job."""
    from scipy import ndimage

    cleft = np.asarray(cleft, dtype=bool)
    if not cleft.any():
        return np.zeros(cleft.shape, dtype=bool)
    return ndimage.distance_transform_edt(~cleft, sampling=voxel_size) <= distance_nm


def _intensity(raw: np.ndarray, rng, aug: dict) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] with random contrast / brightness (per section jitter), noise, missing sections."""
    x = raw.astype(np.float32) * (2.0 / 255.0) - 1.0
    s = float(aug["intensity"])
    if s > 0:
        scale = 1.0 + rng.uniform(-s, s)
        shift = rng.uniform(-s, s)
        per_section = rng.uniform(-s / 4, s / 4, size=(x.shape[0], 1, 1))
        x = x * scale + shift + per_section
    if aug["noise"] > 0:
        x = x + rng.normal(0.0, rng.uniform(0, aug["noise"]), size=x.shape).astype(np.float32)
    if aug["missing_section_prob"] > 0:
        missing = rng.random(x.shape[0]) < aug["missing_section_prob"]
        x[missing] = rng.uniform(-1.0, 1.0) if missing.any() else 0.0
    return np.clip(x, -1.0, 1.0).astype(np.float32)


# --- loss and metrics ----------------------------------------------------------------------------------------


def balanced_bce(logits, target, mask, max_weight=20.0):
    """Per-channel class-balanced BCE: positives and negatives of each channel weigh half each.

    Each class weight is clipped at ``max_weight``: a number, or one per channel (a sequence or tensor).
    """
    import torch
    import torch.nn.functional as F

    max_weight = torch.as_tensor(max_weight, dtype=logits.dtype, device=logits.device)

    dims = (0, 2, 3, 4)
    pos = (target * mask).sum(dims)
    neg = ((1 - target) * mask).sum(dims)
    total = pos + neg
    classes = (pos > 0).float() + (neg > 0).float()  # a channel with one class present weighs it 1
    w_pos = torch.minimum(total / (classes.clamp(min=1) * pos.clamp(min=1)), max_weight).view(1, -1, 1, 1, 1)
    w_neg = torch.minimum(total / (classes.clamp(min=1) * neg.clamp(min=1)), max_weight).view(1, -1, 1, 1, 1)
    weight = mask * (target * w_pos + (1 - target) * w_neg)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / mask.sum().clamp(min=1)


def prf(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Precision, recall, F1 of boolean predictions against boolean truth (optionally masked)."""
    if mask is not None:
        pred, truth = pred[mask], truth[mask]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def boundary_map(aff: np.ndarray, mode: str = "min", in_plane: bool = True) -> np.ndarray:
    """Voxel boundary probability from nearest-neighbour affinities (channels z, y, x first).

    Each voxel has up to 4 (in-plane) or 6 incident edges. ``mode='min'``: 1 - the weakest incident affinity
    (both sides of a label transition are boundary); ``'max'``: 1 - the strongest (only voxels cut off from all
    neighbours, e.g. label-0 membrane voxels as in gala's ground truth).
    """
    axes = (1, 2) if in_plane else (0, 1, 2)
    incident = []
    for axis in axes:
        a = aff[axis].astype(np.float32)
        incident.append(a)
        # the edge v -> v - e, seen from v - e: shift back by one; voxels at the far end have no such edge
        shifted = np.full_like(a, np.nan)
        index_dst = [slice(None)] * 3
        index_src = [slice(None)] * 3
        index_dst[axis] = slice(0, -1)
        index_src[axis] = slice(1, None)
        shifted[tuple(index_dst)] = a[tuple(index_src)]
        incident.append(shifted)
    stack = np.stack(incident)
    reduced = np.nanmin(stack, axis=0) if mode == "min" else np.nanmax(stack, axis=0)
    return 1.0 - reduced


def boundary_prf(pred: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> dict:
    """Boundary P/R/F1 where a hit may be ``tolerance`` voxels away in-plane (per section)."""
    if tolerance <= 0:
        return prf(pred, truth)
    from scipy import ndimage

    st = np.zeros((1, 2 * tolerance + 1, 2 * tolerance + 1), dtype=bool)
    st[0] = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), tolerance)
    truth_d = ndimage.binary_dilation(truth, st)
    pred_d = ndimage.binary_dilation(pred, st)
    tp_p = int(np.count_nonzero(pred & truth_d))
    tp_r = int(np.count_nonzero(truth & pred_d))
    p = tp_p / max(1, int(pred.sum()))
    r = tp_r / max(1, int(truth.sum()))
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def gt_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels with label 0 or an in-plane 4-neighbour of a different label."""
    b = labels == 0
    for axis in (1, 2):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        b[tuple(lo)] |= diff
        b[tuple(hi)] |= diff
    return b


def evaluate(model, data: TrainData, params: dict, device="cpu") -> dict:
    """Validation metrics of ``model`` on ``data`` (predicted as a whole volume, like inference does)."""
    import torch

    from connectomix.predict import predict_volume

    arch = model.arch
    model.eval()
    aff, syn = predict_volume(model, data.raw, device=device, batch_size=1, tile_shape=(24, 192, 192))
    target, mask = data.affinity_targets(data.labels, arch.offsets)
    metrics: dict = {}
    # Edges: a cut (affinity < 0.5) is the positive class; nearest-neighbour channels.
    e = prf(aff[:3] < 0.5, ~target[:3], mask[:3])
    metrics.update({f"edge_{k}": v for k, v in e.items()})
    b = boundary_prf(boundary_map(aff, "min") > 0.5, gt_boundaries(data.labels), tolerance=1)
    metrics.update({f"boundary_{k}": v for k, v in b.items()})
    logits = torch.logit(torch.from_numpy(np.clip(aff, 1e-4, 1 - 1e-4)))[None]
    metrics["loss_affinities"] = float(balanced_bce(
        logits, torch.from_numpy(target[None].astype(np.float32)), torch.from_numpy(mask[None].astype(np.float32)),
        params["max_class_weight"]))
    if len(arch.synapse_channels) and data.synapse is not None:
        zone = (partner_zone(data.synapse[0], data.voxel_size, params["partner_zone_nm"])
                if params["partner_zone_nm"] is not None else None)
        for c, name in enumerate(("cleft", "pre", "post")):
            if data.synapse_valid[c]:
                m = prf(syn[c] > 0.5, data.synapse[c], zone if c else None)
                metrics.update({f"{name}_{k}": v for k, v in m.items()})
        if data.synapse_valid[0]:
            m = cleft_object_prf(syn[0] > 0.5, data.synapse[0], data.voxel_size)
            metrics.update({f"cleft_objects_{k}": v for k, v in m.items()})
    model.train()
    return {k: round(float(v), 5) for k, v in metrics.items()}


# --- the training loop ---------------------------------------------------------------------------------------


def _split(data: TrainData, fraction: float) -> tuple[TrainData, TrainData | None]:
    z = data.raw.shape[0]
    n_val = int(round(z * fraction))
    if fraction <= 0 or n_val < 1:
        return data, None
    if z - n_val < 1:
        raise ValueError(f"validation_fraction {fraction} leaves no training sections of {z}")
    return data.slab(0, z - n_val), data.slab(z - n_val, z)


def train(data: TrainData, params: dict | None, out_dir, device: str = "auto", threads: int = 0,
          resume: bool = True, progress: bool = True, extra_meta: dict | None = None) -> dict:
    """Train (or resume) a model and write the checkpoint folder ``out_dir``; returns the checkpoint JSON.

    The last ``validation_fraction`` of the sections is held out for validation. Checkpoints (``weights.pt``,
    ``checkpoint.json`` and ``training_state.pt`` with the optimizer) are written every ``checkpoint_every``
    iterations and at the end; with ``resume`` an existing folder continues from its last iteration.
    """
    import torch
    from tqdm import tqdm

    from connectomix.models import UNet, load_checkpoint, save_checkpoint
    from connectomix.predict import resolve_device
    from connectomix.provenance import config_hash

    params = merge_params(params)
    dev = resolve_device(device, threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(out_dir)
    arch = architecture_from_params(params["model"])
    out_shape = arch.valid_output_shape(params["output_shape"])
    if out_shape[1] != out_shape[2]:
        raise ValueError(f"train output_shape must be square in-plane (y == x), got {out_shape}")
    train_data, val_data = _split(data, params["validation_fraction"])
    state_path = out / "training_state.pt"
    start = 0
    history: list = []
    init_record = None
    if resume and state_path.exists() and (out / "checkpoint.json").exists():
        model, meta = load_checkpoint(out, map_location="cpu")
        init_record = meta["training"].get("init")
        if meta["architecture"] != arch.to_dict():
            raise ValueError(f"cannot resume {out}: its architecture differs from the requested one")
        start = int(meta["iterations"])
        history = list(meta.get("validation_history", []))
        model.train()
    else:
        torch.manual_seed(int(params["seed"]))
        model = UNet(arch)
        if params["init_from"]:
            init, init_meta = load_checkpoint(params["init_from"], map_location="cpu")
            if init_meta["architecture"] != arch.to_dict():
                raise ValueError(f"train.init_from {params['init_from']}: its architecture differs from "
                                 f"train.model; expected {arch.to_dict()}, found {init_meta['architecture']}")
            model.load_state_dict(init.state_dict())
            init_record = {"from": str(params["init_from"]), "weights_sha256": init_meta.get("weights_sha256"),
                           "iterations": init_meta.get("iterations")}
    class_caps = ([float(params["max_class_weight"])] * len(arch.offsets)
                  + [float(params["synapse_max_class_weight"] or params["max_class_weight"])]
                  * len(arch.synapse_channels))
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate(params, start), weight_decay=params["weight_decay"])
    if start:
        state = torch.load(state_path, weights_only=True, map_location=dev)
        opt.load_state_dict(state["optimizer"])
    total = int(params["iterations"])
    seconds = 0.0
    if start and (out / "checkpoint.json").exists():
        seconds = float(json.loads((out / "checkpoint.json").read_text())["training"].get("seconds", 0.0))
    description = dict(data.description or {})
    description.update({"shape": list(data.raw.shape), "voxel_size": list(data.voxel_size),
                        "train_sections": [0, int(train_data.raw.shape[0])],
                        "validation_sections": ([int(train_data.raw.shape[0]), int(data.raw.shape[0])]
                                                if val_data is not None else None),
                        "synapse_channels_with_gt": list(data.synapse_valid) if data.synapse is not None else []})
    metrics = history[-1]["metrics"] if history else {}

    def save(iteration, metrics):
        meta = {
            "iterations": iteration,
            "training": {"data": description, "params": params, "config_hash": config_hash(params),
                         "seed": params["seed"], "device": str(dev), "seconds": round(seconds, 1),
                         "output_shape": list(out_shape), "init": init_record, **(extra_meta or {})},
            "validation": metrics,
            "validation_history": history,
        }
        payload = save_checkpoint(out, model, meta)
        tmp = out / "training_state.pt.tmp"
        torch.save({"optimizer": opt.state_dict(), "iteration": iteration}, tmp)
        os.replace(tmp, state_path)
        return payload

    if start > total:
        raise ValueError(f"{out} already holds {start} iterations, more than the {total} requested")
    if start == total and start:
        # Stopped exactly here by an earlier (longer or interrupted) run: weights at iteration N do not depend on
        # the requested total, so record this request's parameters and a final validation.
        if val_data is not None and (not history or history[-1]["iteration"] != total):
            metrics = evaluate(model, val_data, params, dev)
            history.append({"iteration": total, "metrics": metrics})
        return save(total, metrics)
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="train",
               dynamic_ncols=True)
    payload = None
    loss_avg = None
    for it in bar:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = learning_rate(params, it)
        rng = np.random.default_rng([int(params["seed"]), it])
        raw, target, mask = sample_batch(train_data, arch, out_shape, int(params["batch_size"]), rng, params)
        x = torch.from_numpy(raw).to(dev)
        y = torch.from_numpy(target).to(dev)
        m = torch.from_numpy(mask).to(dev)
        logits = model(x)
        loss = balanced_bce(logits, y, m, class_caps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t0
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        done = it + 1
        if val_data is not None and (done % int(params["validate_every"]) == 0 or done == total):
            metrics = evaluate(model, val_data, params, dev)
            metrics["train_loss"] = round(loss_avg, 5)
            history.append({"iteration": done, "metrics": metrics})
            bar.write(f"iteration {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
        if done % int(params["checkpoint_every"]) == 0 or done == total:
            payload = save(done, metrics)
    bar.close()
    if payload is None:  # nothing left to do (already trained to `iterations`)
        payload = json.loads((out / "checkpoint.json").read_text()) if (out / "checkpoint.json").exists() \
            else save(start, metrics)
    return payload


def synthetic_data(shape=(16, 64, 64), seed: int = 0, cells: int = 12, voxel_size=(40, 8, 8),
                   synapses: int = 6) -> tuple[TrainData, dict]:
    """A tiny Voronoi volume for tests and smoke runs: dark 1-voxel borders, noisy grey cells, a few clefts.

    Returns (TrainData with synapse targets, dict with ``labels``, ``clefts`` and the synapse table).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    size = np.array(shape) * np.array(voxel_size)
    seeds = rng.uniform(0, 1, size=(cells, 3)) * size
    grid = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * v for n, v in zip(shape, voxel_size)], indexing="ij"), -1)
    _, nearest = cKDTree(seeds).query(grid.reshape(-1, 3))
    labels = (nearest.reshape(shape) + 1).astype(np.uint64)
    border = gt_boundaries(labels) & ~np.pad(np.diff(labels, axis=2) == 0, ((0, 0), (0, 0), (0, 1)),
                                              constant_values=True)
    raw = 150 + rng.normal(0, 12, size=shape) + rng.uniform(-20, 20, size=cells + 1)[labels.astype(int)]
    raw[border] = 60
    raw = np.clip(raw, 0, 255).astype(np.uint8)
    clefts = np.zeros(shape, dtype=np.uint64)
    rows = {"id": [], "pre": [], "post": []}
    xb = np.argwhere(border)
    for sid in range(1, synapses + 1):
        if not len(xb):
            break
        z, y, x = xb[rng.integers(len(xb))]
        pre = labels[z, y, x]
        post = labels[z, y, min(x + 1, shape[2] - 1)]
        if pre == post:
            continue
        patch = (slice(max(0, z - 1), z + 2), slice(max(0, y - 3), y + 4), slice(x, x + 1))
        clefts[patch] = np.where(border[patch], sid, clefts[patch])
        rows["id"].append(sid)
        rows["pre"].append(int(pre))
        rows["post"].append(int(post))
    table = {k: np.array(v, dtype=np.uint64) for k, v in rows.items()}
    syn = synapse_targets(labels, clefts, table, voxel_size, 40.0)
    data = TrainData(raw, labels, tuple(voxel_size), syn, (True, True, True), {"synthetic": True, "seed": seed})
    return data, {"labels": labels, "clefts": clefts, "synapses": table}


# --- data loading --------------------------------------------------------------------------------------------


def load_volume_data(volume, synapses=None, distance_nm: float = 80.0, cleft_radius_nm: float = 0.0,
                     labels: np.ndarray | None = None, labels_source: str | None = None,
                     labels_offset: Sequence[int] | None = None, per_section: bool = False,
                     clefts: np.ndarray | None = None, clefts_source: str | None = None) -> TrainData:
    """Ground truth from a dataset's OME-Zarr (``raw``, ``gt/labels``, ``gt/clefts``) and ``gt/synapses.parquet``;
    ``labels`` (with ``labels_source`` naming them) replaces ``gt/labels``, ``clefts`` (a cleft mask or cleft
    labels, ``clefts_source`` naming them) ``gt/clefts``: ground truth kept outside the volume, both cropped to
    the volume from ``labels_offset`` (voxels) when given. File clefts train the cleft channel only (no partners).
    ``per_section``: the labels are 2D instances per section (see :class:`TrainData`)."""
    from connectomix.io import has_array, open_array, read_meta

    meta = read_meta(volume, "raw")
    raw = np.asarray(open_array(volume, "raw")[...])

    def cropped(array, source):
        if labels_offset is not None:
            array = array[tuple(slice(o, o + n) for o, n in zip(labels_offset, raw.shape))]
        if array.shape != raw.shape:
            raise ValueError(f"ground truth {source}: shape {list(array.shape)} differs from the raw volume "
                             f"{volume} {list(raw.shape)} (crop it, or give --gt-roi-offset for a dataset ROI)")
        return array

    if labels is None:
        if not has_array(volume, "gt/labels"):
            raise ValueError(f"{volume}: no gt/labels array; give the ground truth as a file (--gt-file)")
        labels = np.asarray(open_array(volume, "gt/labels")[...])
        labels_source = "gt/labels"
    else:
        labels = cropped(labels, labels_source).astype(np.uint64, copy=False)
    syn = None
    valid = (False, False, False)
    table = None
    if clefts is not None:
        syn = synapse_targets(labels, cropped(clefts, clefts_source), None, meta.voxel_size, distance_nm,
                              cleft_radius_nm)
        valid = (True, False, False)
    elif has_array(volume, "gt/clefts"):
        cleft_labels = np.asarray(open_array(volume, "gt/clefts")[...])
        if synapses and Path(synapses).exists():
            import pandas as pd

            table = pd.read_parquet(synapses)
        syn = synapse_targets(labels, cleft_labels, table, meta.voxel_size, distance_nm, cleft_radius_nm)
        valid = (True, table is not None, table is not None)
    summary = Path(volume).parent / "gt" / "phantom.json"
    phantom_params = None
    if summary.exists():
        phantom_params = json.loads(summary.read_text()).get("params")
    desc = {"volume": str(volume), "raw": "raw", "labels": labels_source, "phantom_params": phantom_params,
            "clefts": clefts_source if clefts is not None else "gt/clefts" if syn is not None else None,
            "synapses": str(synapses) if table is not None else None,
            "n_synapses": int(len(table)) if table is not None else 0, "per_section": per_section}
    return TrainData(raw, labels, tuple(meta.voxel_size), syn, valid, desc, per_section)


def load_phantom_data(spec: dict, voxel_size: Sequence[float], distance_nm: float = 80.0,
                      cleft_radius_nm: float = 0.0) -> TrainData:
    """Generate a phantom in memory (``connectomix.phantom``) and return it as training data."""
    from connectomix.phantom import PhantomParams, generate

    ph = generate(PhantomParams.from_dict(dict(spec)), tuple(voxel_size))
    syn = synapse_targets(ph.labels, ph.clefts, ph.synapses, voxel_size, distance_nm, cleft_radius_nm)
    desc = {"phantom_params": dict(spec), "raw": "phantom.raw", "labels": "phantom.labels",
            "clefts": "phantom.clefts", "n_synapses": int(len(ph.synapses))}
    return TrainData(np.asarray(ph.raw), np.asarray(ph.labels), tuple(voxel_size), syn, (True, True, True), desc)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", help="OME-Zarr with raw, gt/labels (and gt/clefts)")
    source.add_argument("--phantom", metavar="JSON",
                        help="generate this phantom (connectomix.phantom parameters as JSON) in memory and train on it")
    parser.add_argument("--voxel-size", type=float, nargs=3, default=[40.0, 8.0, 8.0], metavar=("Z", "Y", "X"),
                        help="voxel size in nm for --phantom (default 40 8 8)")
    parser.add_argument("--synapses", default=None, help="gt/synapses.parquet (pre/post targets)")
    parser.add_argument("--gt-file", help="with --volume: ground-truth labels in a file (HDF5, zarr) instead of the "
                                          "volume's gt/labels (0 = boundary / unlabelled)")
    parser.add_argument("--gt-key", help="dataset inside --gt-file (HDF5 default 'stack')")
    parser.add_argument("--gt-format", default="auto",
                        choices=["auto", "hdf5", "zarr", "png-membrane", "png-boundary"],
                        help="--gt-file format (png-*: a folder of 2D section images: implies --gt-per-section)")
    parser.add_argument("--gt-roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="crop --gt-file and --clefts-file to the volume from this voxel (the dataset's roi.offset)")
    parser.add_argument("--gt-per-section", action="store_true",
                        help="--gt-file holds 2D instances per section: the z affinities get no target")
    parser.add_argument("--clefts-file", help="with --volume: cleft ground truth in a file (a folder of mask PNGs, "
                                              "HDF5, zarr; nonzero = cleft) instead of the volume's gt/clefts; "
                                              "trains the cleft channel only")
    parser.add_argument("--clefts-key", help="dataset inside --clefts-file (HDF5 default 'stack')")
    parser.add_argument("--clefts-format", default="auto", choices=["auto", "hdf5", "zarr", "png-mask"],
                        help="--clefts-file format")
    parser.add_argument("--out", required=True, help="checkpoint folder to write (weights.pt, checkpoint.json)")
    parser.add_argument("--params", default="{}", help="the `train` config section as JSON (defaults filled)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present, else CPU), cpu, cuda ...")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as error:
        raise ValueError(f"--params is not valid JSON: {error}") from error
    merged = merge_params(params)
    if args.phantom and (args.gt_file or args.clefts_file):
        raise ValueError("--gt-file and --clefts-file go with --volume (a phantom brings its own ground truth)")
    if args.gt_per_section and not args.gt_file:
        raise ValueError("--gt-per-section describes --gt-file: give the file")
    if args.phantom:
        data = load_phantom_data(json.loads(args.phantom), args.voxel_size, merged["pre_post_distance_nm"],
                                 merged["cleft_radius_nm"])
        source = f"--phantom '{args.phantom}' --voxel-size {' '.join(f'{v:g}' for v in args.voxel_size)} "
    else:
        from connectomix.evaluate.segmentation import load_ground_truth, load_mask

        labels = clefts = None
        source = f"--volume {args.volume} "
        per_section = args.gt_per_section
        if args.gt_file:
            fmt = "png-membrane" if args.gt_format == "auto" and Path(args.gt_file).is_dir() else args.gt_format
            per_section = per_section or fmt.startswith("png-")  # section images hold 2D instances
            labels = load_ground_truth(gt_file=args.gt_file, gt_key=args.gt_key, gt_format=fmt)
            source += (f"--gt-file {args.gt_file} " + (f"--gt-key {args.gt_key} " if args.gt_key else "")
                       + f"--gt-format {args.gt_format} " + ("--gt-per-section " if per_section else ""))
        if args.clefts_file:
            clefts = load_mask(args.clefts_file, args.clefts_key, args.clefts_format)
            source += (f"--clefts-file {args.clefts_file} " + (f"--clefts-key {args.clefts_key} " if args.clefts_key
                                                                else "") + f"--clefts-format {args.clefts_format} ")
        if args.gt_roi_offset:
            source += f"--gt-roi-offset {' '.join(map(str, args.gt_roi_offset))} "
        data = load_volume_data(args.volume, args.synapses, merged["pre_post_distance_nm"], merged["cleft_radius_nm"],
                                labels, args.gt_file, args.gt_roi_offset, per_section, clefts, args.clefts_file)
    command = (f"python -m connectomix train {source}"
               + (f"--synapses {args.synapses} " if args.synapses else "")
               + f"--out {args.out} --params '{json.dumps(params, sort_keys=True)}' --device {args.device} "
               + f"--threads {args.threads}")
    t0 = time.time()
    payload = train(data, merged, args.out, args.device, args.threads, resume=not args.no_resume,
                    progress=not args.no_progress, extra_meta={"command": command})
    print(f"train: {payload['iterations']} iterations, validation {payload['validation']} "
          f"({time.time() - t0:.0f} s) -> {args.out}")
    return 0
