"""Render EM-like grey values from the labelled geometry: cytoplasm texture, dark membranes (some faint),
light extracellular space, nuclei, mitochondria, postsynaptic densities, vesicle clouds, blur, noise and
per-section brightness/contrast jitter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from connectomix.phantom.tissue import AXON, DENDRITE, FILLER, GLIA, inplane_border


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise, rescaled to unit standard deviation.

    Wide in-plane filters run on a grid 4x coarser in y and x, then are interpolated back (same look, less time).
    """
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (3,))
    factor = np.array([1, 4, 4]) if min(sigma[1:]) >= 6 else np.ones(3, int)
    coarse = tuple(s if f == 1 else -(-s // f) + 1 for s, f in zip(shape, factor))
    field = ndimage.gaussian_filter(rng.normal(size=coarse).astype(np.float32), sigma / factor)
    if factor.max() > 1:  # separable linear interpolation as two small matrix products
        ly, lx = (_lerp_matrix(shape[a], field.shape[a], factor[a]) for a in (1, 2))
        field = np.matmul(np.matmul(ly, field), lx.T)
    return field / max(float(field.std()), 1e-6)


def _lerp_matrix(n_out, n_in, factor):
    """(n_out, n_in) weights of linear interpolation at positions i / factor."""
    pos = np.arange(n_out) / factor
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    matrix[np.arange(n_out), lo] = 1 - w
    matrix[np.arange(n_out), lo + 1] = w
    return matrix


def membranes(labels, rng, voxel):
    """Membrane mask: in-plane label borders, 1-3 voxels thick (thicker where a smooth field is high)."""
    border = inplane_border(labels)
    thick_field = _smooth_noise(rng, labels.shape, (1, 8, 8))
    grown = ndimage.binary_dilation(border, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    return border | (grown & (thick_field > np.quantile(thick_field, 0.75)))


def mitochondria(rng, labels, kind, segments, density, voxel):
    """Elongated ellipsoids inside dendrites and thick filler axons, clipped to their own object."""
    mito = np.zeros(labels.shape, dtype=bool)
    lengths = np.array([np.linalg.norm(seg[2] - seg[1]) / 1000.0 for seg in segments])  # µm
    eligible = np.array([seg[5] in (DENDRITE, FILLER) and min(seg[3], seg[4]) >= 25 for seg in segments], bool)
    chosen = eligible & (rng.random(len(segments)) < density * lengths)
    for i in np.flatnonzero(chosen):
        label, p0, p1, r0, r1, _ = segments[i]
        t = rng.random()
        centre = p0 + t * (p1 - p0)
        axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-9)
        radius = 0.55 * (r0 + t * (r1 - r0))
        half_len = radius * rng.uniform(2.0, 4.0)
        reach = np.ceil((half_len + radius) / voxel).astype(int)
        c = np.round(centre / voxel).astype(int)
        lo = np.maximum(c - reach, 0)
        hi = np.minimum(c + reach + 1, labels.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1) * voxel - centre
        along = grid @ axis
        across = np.linalg.norm(grid - along[..., None] * axis, axis=-1)
        inside = (along / half_len) ** 2 + (across / radius) ** 2 <= 1
        mito[box] |= inside & (labels[box] == label)
    return mito


def render(rng, params, labels, kind, mito, clefts, synapses, nuclei, voxel):
    """Grey values (uint8) for the phantom."""
    shape = labels.shape
    n_labels = int(labels.max()) + 1
    base = rng.normal(172, 11, n_labels).astype(np.float32)
    glia = np.zeros(n_labels, dtype=bool)
    glia[np.unique(labels[kind == GLIA])] = True
    base[glia] += 18  # glia: lighter, watery cytoplasm
    image = base[labels]
    image[labels == 0] = 205  # extracellular space
    image += 7 * _smooth_noise(rng, shape, (1.2, 2.5, 2.5))  # cytoplasmic texture
    image += 4 * _smooth_noise(rng, shape, (1.0, 1.0, 1.0))
    # granules (ribosomes, vesicles, microtubules cut across): sparse dark specks, denser in axons
    grain = _smooth_noise(rng, shape, (0.5, 0.8, 0.8))
    threshold = np.where(np.isin(kind, (AXON, FILLER)), 1.5, 2.0)
    image *= 1 - 0.22 * np.clip(grain - threshold, 0, 1) * (labels > 0)

    # nuclei: darker, clumpy chromatin with an envelope
    nucleus_border = nuclei ^ ndimage.binary_erosion(nuclei, structure=np.ones((1, 3, 3), bool))
    chromatin = _smooth_noise(rng, shape, (0.8, 1.5, 1.5))
    image[nuclei] = 150 + 14 * chromatin[nuclei]
    image[nucleus_border] *= 0.7

    # mitochondria: dark, with a darker outline and striped texture
    mito_border = mito ^ ndimage.binary_erosion(mito, structure=np.ones((1, 3, 3), bool))
    cristae = 1 + 0.15 * np.sin(6 * _smooth_noise(rng, shape, (0.8, 1.5, 1.5)))  # worm-like bands
    image[mito] = image[mito] * 0.62 * cristae[mito]
    image[mito_border] *= 0.75

    # membranes, faint in places
    membrane = membranes(labels, rng, voxel)
    faint_field = _smooth_noise(rng, shape, (1, 12, 12))
    faint = faint_field > np.quantile(faint_field, 1 - params.faint_membrane_fraction)
    darkening = np.where(faint, 0.35, 1.0) * params.membrane_contrast
    image[membrane] *= (1 - darkening[membrane])

    # synapses: dark postsynaptic density and a presynaptic vesicle cloud
    if len(synapses):
        _synapse_ultrastructure(rng, image, labels, clefts, synapses, voxel)

    image = ndimage.gaussian_filter(image, (0, params.blur_sigma_px, params.blur_sigma_px))
    gain = rng.normal(1.0, params.section_jitter, shape[0]).astype(np.float32)
    offset = rng.normal(0.0, params.section_jitter * 60, shape[0]).astype(np.float32)
    image = (image - 128) * gain[:, None, None] + 128 + offset[:, None, None]
    image += rng.normal(0, params.noise_sigma, shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _synapse_ultrastructure(rng, image, labels, clefts, synapses, voxel):
    psd_depth = np.array([1, 3, 3])
    for syn in synapses.itertuples():
        ctr = np.array([syn.ctr_z_nm, syn.ctr_y_nm, syn.ctr_x_nm])
        c = np.round(ctr / voxel).astype(int)
        reach = np.array([3, 22, 22])
        lo = np.maximum(c - reach, 0)
        hi = np.minimum(c + reach + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sheet = clefts[box] == syn.id
        if not sheet.any():
            continue
        near_sheet = ndimage.binary_dilation(sheet, structure=np.ones(tuple(2 * psd_depth + 1), bool))
        lab = labels[box]
        psd = near_sheet & (lab == syn.post)
        image[box][psd] *= 0.5
        image[box][sheet] *= 0.8
        # vesicles: ~40 nm dark rings/dots in the presynaptic object within ~150 nm of the cleft
        pre = lab == syn.pre
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1) * voxel
        dist = np.linalg.norm(grid - ctr, axis=-1)
        candidates = np.argwhere(pre & (dist < 160) & ~near_sheet)
        if len(candidates) == 0:
            continue
        ys, xs = np.ogrid[-3:4, -3:4]
        ring = np.where(ys**2 + xs**2 <= 2, 0.85, np.where(ys**2 + xs**2 <= 5, 0.55, 1.0))  # dark rim, pale lumen
        for idx in candidates[rng.choice(len(candidates), min(30, len(candidates)), replace=False)]:
            z, y, x = idx
            y0, x0 = y - 3, x - 3
            if y0 < 0 or x0 < 0 or y0 + 7 > sheet.shape[1] or x0 + 7 > sheet.shape[2]:
                continue
            patch = image[box][z, y0:y0 + 7, x0:x0 + 7]  # a view: edits land in the image
            inside = pre[z, y0:y0 + 7, x0:x0 + 7]
            patch[inside] *= ring[inside]


def nuclei_mask(neurons, labels, voxel):
    """A nucleus (sphere of 0.55 x soma radius) in every soma, clipped to the soma's label."""
    mask = np.zeros(labels.shape, dtype=bool)
    for n in neurons:
        r = 0.55 * n.soma_radius
        c = np.round(n.soma / voxel).astype(int)
        reach = np.ceil(r / voxel).astype(int) + 1
        lo = np.maximum(c - reach, 0)
        hi = np.minimum(c + reach + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1) * voxel
        mask[box] |= (np.linalg.norm(grid - n.soma, axis=-1) <= r) & (labels[box] == n.id)
    return mask


__all__ = ["render", "mitochondria", "nuclei_mask", "membranes"]
