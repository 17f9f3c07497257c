"""Training data in memory (:class:`TrainData`), loaded from a volume or a phantom, and augmented batches.

Augmentation (:func:`sample_batch`) works on the raw *and label* crops together (in-plane flips, 90-degree
rotations, z flip, misalignment, elastic deformation); targets are computed from the augmented labels, so affinity
channels stay consistent with the image by construction (tests check the channel permutation explicitly).
Intensity, contrast, noise and missing sections change only the raw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from connectomix.io import has_array, open_array, read_meta, read_padded
from connectomix.phantom import PhantomParams, generate
from connectomix.train.targets import affinity_targets, partner_zone, synapse_targets


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
    value_range: tuple = (0.0, 255.0)  # grey values -> -1 and 1 (the checkpoint's input normalization)

    def slab(self, z0: int, z1: int) -> "TrainData":
        syn = None if self.synapse is None else self.synapse[:, z0:z1]
        return TrainData(self.raw[z0:z1], self.labels[z0:z1], self.voxel_size, syn, self.synapse_valid,
                         self.description, self.per_section, self.value_range)

    @property
    def isotropic(self) -> bool:
        return max(self.voxel_size) <= 1.05 * min(self.voxel_size)

    def transposed(self, order: Sequence[int]) -> "TrainData":
        """The same data with its (z, y, x) axes permuted (views, no copy); only for isotropic voxels."""
        order = tuple(int(a) for a in order)
        syn = None if self.synapse is None else self.synapse.transpose((0, *(a + 1 for a in order)))
        return TrainData(self.raw.transpose(order), self.labels.transpose(order),
                         tuple(self.voxel_size[a] for a in order), syn, self.synapse_valid, self.description,
                         self.per_section, self.value_range)


    def affinity_targets(self, labels: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """:func:`affinity_targets` of ``labels`` (this data's or a patch of them), z channels masked when the
        labels are per section."""
        aff, mask = affinity_targets(labels, offsets)
        if self.per_section:
            mask[[c for c, o in enumerate(offsets) if int(o[0]) != 0]] = False
        return aff, mask


def rescaled(data: TrainData, voxel_size: Sequence[float]) -> TrainData:
    """``data`` resampled in-plane (y, x) to ``voxel_size``'s y and x (linear for raw, nearest for labels and
    synapse masks); z is kept. For training on volumes of several resolutions at one in-plane pixel size."""
    from scipy import ndimage

    factors = (1.0, data.voxel_size[1] / float(voxel_size[1]), data.voxel_size[2] / float(voxel_size[2]))
    if np.allclose(factors, 1.0, atol=1e-3):
        return data
    raw = ndimage.zoom(data.raw, factors, order=1, grid_mode=True, mode="grid-mirror")
    labels = ndimage.zoom(data.labels, factors, order=0, grid_mode=True, mode="grid-mirror")
    syn = None
    if data.synapse is not None:
        syn = np.stack([ndimage.zoom(c, factors, order=0, grid_mode=True, mode="grid-mirror") for c in data.synapse])
    desc = dict(data.description or {}, rescaled_from_voxel_size=list(data.voxel_size))
    return TrainData(raw, labels, (data.voxel_size[0], float(voxel_size[1]), float(voxel_size[2])), syn,
                     data.synapse_valid, desc, data.per_section, data.value_range)


def at_pixel_nm(data: TrainData, pixel_nm: float | None) -> TrainData:
    """``data`` resampled in-plane to ``pixel_nm`` (:func:`rescaled`; ``train.pixel_nm``), or as it is when None."""
    return data if pixel_nm is None else rescaled(data, (data.voxel_size[0], pixel_nm, pixel_nm))


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


def _intensity(raw: np.ndarray, rng, aug: dict, value_range=(0.0, 255.0)) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (``value_range`` -> -1, 1, as predict does) with random gamma, in-plane blur,
    contrast / brightness (per section jitter), noise, missing sections."""
    lo, hi = (float(v) for v in value_range)
    x = np.clip((raw.astype(np.float32) - lo) * (2.0 / (hi - lo)) - 1.0, -1.0, 1.0)
    if aug["gamma"] > 0:
        g = float(np.exp(rng.uniform(-aug["gamma"], aug["gamma"])))
        x = ((x + 1.0) * 0.5) ** g * 2.0 - 1.0
    if aug["blur"] > 0:
        from scipy import ndimage

        sigma = rng.uniform(0, aug["blur"])
        if sigma > 0.3:
            x = ndimage.gaussian_filter(x, (0, sigma, sigma), mode="mirror")
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


def sample_batch(data, arch, output_shape, batch_size: int, rng, params: dict):
    """A training batch: (raw float32 (N, 1, *in), targets float32 (N, C, *out), mask float32 (N, C, *out)).

    ``data``: one :class:`TrainData` or a list of them; each patch comes from one, drawn with probability
    proportional to its number of voxels (``dataset_sampling: voxels``) or uniformly (``equal``).
    ``augment.transpose`` permutes the axes of isotropic data."""
    datasets = list(data) if isinstance(data, (list, tuple)) else [data]
    if params["augment"]["transpose"]:
        anisotropic = [list(d.voxel_size) for d in datasets if not d.isotropic]
        if anisotropic:
            raise ValueError(f"train.augment.transpose needs isotropic voxels; got voxel sizes {anisotropic}")
    if len(datasets) == 1 and not params["augment"]["transpose"]:
        return _sample_batch(datasets[0], arch, output_shape, batch_size, rng, params)
    sizes = np.array([d.raw.size if params["dataset_sampling"] == "voxels" else 1 for d in datasets], dtype=float)
    parts = []
    for _ in range(batch_size):
        d = datasets[int(rng.choice(len(datasets), p=sizes / sizes.sum()))]
        if params["augment"]["transpose"]:
            d = d.transposed(rng.permutation(3))
        parts.append(_sample_batch(d, arch, output_shape, 1, rng, params))
    return tuple(np.concatenate(p) for p in zip(*parts))


def _sample_batch(data: TrainData, arch, output_shape, batch_size: int, rng, params: dict):
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
        raw = _intensity(raw, rng, aug, data.value_range)
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
    ph = generate(PhantomParams.from_dict(dict(spec)), tuple(voxel_size))
    syn = synapse_targets(ph.labels, ph.clefts, ph.synapses, voxel_size, distance_nm, cleft_radius_nm)
    desc = {"phantom_params": dict(spec), "raw": "phantom.raw", "labels": "phantom.labels",
            "clefts": "phantom.clefts", "n_synapses": int(len(ph.synapses))}
    return TrainData(np.asarray(ph.raw), np.asarray(ph.labels), tuple(voxel_size), syn, (True, True, True), desc)
