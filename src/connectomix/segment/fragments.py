"""Watershed fragments (supervoxels) from affinities, one block at a time, with globally unique ids.

Affinities follow the data contract: (c, z, y, x), channel ``c`` holds P(v and v + offsets[c] same object); the
nearest-neighbour channels have offsets [-1, 0, 0], [0, -1, 0], [0, 0, -1].

Fragment ids are unique without coordination: ``fragment_id(block_index, local)`` packs the block's grid index
(11 bits per axis) above a 30-bit local id, so ids derive from position and stay below 2**63 (safe as int64).
"""

from __future__ import annotations

import numpy as np

LOCAL_BITS = 30
AXIS_BITS = 11
MAX_LOCAL = (1 << LOCAL_BITS) - 1
MAX_BLOCK_INDEX = (1 << AXIS_BITS) - 1

NN_OFFSETS = ([-1, 0, 0], [0, -1, 0], [0, 0, -1])


def fragment_id_base(block_index) -> np.uint64:
    """The id offset of a block: its grid index (z, y, x) packed above the local id bits."""
    i, j, k = (int(v) for v in block_index)
    if max(i, j, k) > MAX_BLOCK_INDEX or min(i, j, k) < 0:
        raise ValueError(f"block index {block_index} outside 0..{MAX_BLOCK_INDEX} per axis")
    return np.uint64((((i << AXIS_BITS) | j) << AXIS_BITS | k) << LOCAL_BITS)


def block_of_fragment(ids) -> np.ndarray:
    """Grid index (z, y, x) of the block that made each fragment id; shape (n, 3)."""
    ids = np.asarray(ids, dtype=np.uint64) >> np.uint64(LOCAL_BITS)
    mask = np.uint64(MAX_BLOCK_INDEX)
    return np.stack([(ids >> np.uint64(2 * AXIS_BITS)) & mask, (ids >> np.uint64(AXIS_BITS)) & mask, ids & mask],
                    axis=-1).astype(np.int64)


def nn_channels(offsets) -> list[int]:
    """Indices of the nearest-neighbour channels (z, y, x) in an affinities' ``offsets`` list."""
    offsets = [list(map(int, o)) for o in offsets]
    try:
        return [offsets.index(o) for o in NN_OFFSETS]
    except ValueError:
        raise ValueError(f"affinities must include the offsets {NN_OFFSETS}; got {offsets}") from None


def mean_affinity(affs: np.ndarray, channels, axes=(0, 1, 2)) -> np.ndarray:
    """Mean affinity of each voxel to its face neighbours along ``axes`` (both sides), float32 in [0, 1].

    ``affs`` is uint8 (value/255) or float; ``channels[d]`` is the channel of offset -1 along axis d.
    Edges leaving the array are not counted.
    """
    scale = 1.0 / 255 if affs.dtype == np.uint8 else 1.0
    total = np.zeros(affs.shape[1:], np.float32)
    count = np.zeros(affs.shape[1:], np.float32)
    for d in axes:
        a = affs[channels[d]].astype(np.float32) * scale
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d] = slice(1, None)  # voxel v: edge (v, v-1) stored at v
        hi[d] = slice(None, -1)  # voxel v-1: the same edge seen from below
        total[tuple(lo)] += a[tuple(lo)]
        count[tuple(lo)] += 1
        total[tuple(hi)] += a[tuple(lo)]
        count[tuple(hi)] += 1
    return total / np.maximum(count, 1)


def _seeds(fg: np.ndarray, dist: np.ndarray, smooth: np.ndarray | None, window, connectivity: int) -> np.ndarray:
    """Seed labels: plateaus of local maxima (of the distance transform, or of smoothed affinity) inside fg."""
    import cc3d
    from scipy import ndimage

    score = dist if smooth is None else smooth
    window = tuple(int(w) for w in window)[-score.ndim:]
    peak = ndimage.maximum_filter(score, size=window, mode="nearest")
    maxima = (score >= peak) & fg
    if maxima.ndim == 2:
        return cc3d.connected_components(maxima, connectivity=8 if connectivity > 1 else 4).astype(np.int64)
    return cc3d.connected_components(maxima, connectivity=26 if connectivity > 1 else 6).astype(np.int64)


def _watershed_region(mean_aff: np.ndarray, params: dict, voxel_size) -> np.ndarray:
    """Seeded watershed of one 3D region or one 2D section; every voxel gets a label (0 only if no seed)."""
    import edt
    from scipy import ndimage
    from skimage.segmentation import watershed

    p = params["fragments"]
    fg = mean_aff > p["threshold"]
    if not fg.any():
        return np.zeros(mean_aff.shape, np.int64)
    dist = edt.edt(fg, anisotropy=tuple(float(v) for v in voxel_size), black_border=False).astype(np.float32)
    smooth = None
    if p["seeds"] == "affinity":
        sigma = [p["smooth_sigma_nm"] / v for v in voxel_size]
        smooth = ndimage.gaussian_filter(mean_aff, sigma)
    elif p["seeds"] != "distance":
        raise ValueError(f"segment.fragments.seeds must be 'distance' or 'affinity', got {p['seeds']!r}")
    markers = _seeds(fg, dist, smooth, p["seed_window"], connectivity=2)
    # Foreground floods first, down the distance transform (block-independent: distances are in nm, not
    # normalised); boundary voxels (height >= 1 - threshold > 0) follow, by boundary probability.
    height = np.where(fg, -dist, 1.0 - mean_aff).astype(np.float32)
    labels = watershed(height, markers, connectivity=1)
    return _filter_small(labels, height, p["min_size"])


def _filter_small(labels: np.ndarray, height: np.ndarray, min_size: int) -> np.ndarray:
    """Drop fragments smaller than ``min_size`` voxels and let their neighbours flood their voxels."""
    from skimage.segmentation import watershed

    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small[1:].any() or small[1:].all():
        return labels
    markers = np.where(small[labels], 0, labels)
    return watershed(height, markers, connectivity=1)


def watershed_fragments(affs: np.ndarray, offsets, voxel_size, params: dict, mode: str) -> np.ndarray:
    """Seeded watershed fragments of one block's read ROI; int64 labels, 1..n (0 where no fragment).

    ``mode`` '3d' runs one 3D watershed; '2d' runs each z section on its own (in-plane affinities only), which
    suits anisotropic serial-section data. Seeds are maxima of the boundary distance transform (or of smoothed
    mean affinity) within ``seed_window`` voxels; fragments below ``min_size`` voxels are absorbed by neighbours.
    """
    ch = nn_channels(offsets)
    if mode == "3d":
        mean_aff = mean_affinity(affs, ch, axes=(0, 1, 2))
        return _watershed_region(mean_aff, params, voxel_size)
    if mode != "2d":
        raise ValueError(f"fragment mode must be '2d' or '3d', got {mode!r}")
    mean_aff = mean_affinity(affs, ch, axes=(1, 2))
    out = np.zeros(mean_aff.shape, np.int64)
    next_id = 0
    for z in range(mean_aff.shape[0]):
        sec = _watershed_region(mean_aff[z], params, voxel_size[1:])
        sec[sec > 0] += next_id
        next_id = max(next_id, int(sec.max()))
        out[z] = sec
    return out


def mutex_fragments(affs: np.ndarray, offsets, params: dict, mode: str) -> np.ndarray:
    """Mutex-watershed (mwatershed) fragments of one block's read ROI, all channels; int64 labels 1..n.

    Edge weights are affinity - ``fragments.threshold`` (raise it for more, smaller fragments); long-range
    channels (if any) act as repulsive constraints. In '2d' mode only in-plane channels are used, section by section.
    """
    import mwatershed

    scale = 1.0 / 255 if affs.dtype == np.uint8 else 1.0
    bias = params["fragments"]["threshold"]
    weights = affs.astype(np.float64) * scale - bias
    offsets = [list(map(int, o)) for o in offsets]
    if mode == "3d":
        labels = mwatershed.agglom(weights, offsets).astype(np.int64)
    else:
        keep = [c for c, o in enumerate(offsets) if o[0] == 0]
        labels = np.zeros(affs.shape[1:], np.int64)
        next_id = 0
        for z in range(affs.shape[1]):
            sec = mwatershed.agglom(weights[keep][:, z:z + 1], [offsets[c] for c in keep]).astype(np.int64)[0]
            sec = _consecutive(sec)
            sec[sec > 0] += next_id
            next_id = max(next_id, int(sec.max()))
            labels[z] = sec
    labels = _consecutive(labels)
    if params["fragments"]["min_size"] > 1:
        mean_aff = mean_affinity(affs, nn_channels(offsets))
        labels = _filter_small(labels, 1.0 - mean_aff, params["fragments"]["min_size"])
    return labels


def _consecutive(labels: np.ndarray) -> np.ndarray:
    import fastremap

    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True, in_place=False)
    return out.astype(np.int64)


def block_fragments(affs: np.ndarray, offsets, voxel_size, params: dict, mode: str, write_in_read,
                    block_index) -> tuple[np.ndarray, int, dict]:
    """Fragments of one block: computed on the read ROI (``affs``), cropped to the write ROI, renumbered in order
    of first appearance and offset by the block's id base.

    Returns (uint64 labels of the write ROI, fragment count, face views). The views are this block's labelling of
    the voxel planes just outside its write ROI (``up{d}``: the first plane of the upper neighbour along axis d,
    ``down{d}``: the last plane of the lower one), in this block's global ids (0 where the label does not reach
    the write ROI); the RAG step uses them to join fragments cut by a block face (see ``rag.face_overlaps``).
    """
    import fastremap

    method = params["fragments"]["method"]
    if method == "watershed":
        labels = watershed_fragments(affs, offsets, voxel_size, params, mode)
    elif method == "mutex":
        labels = mutex_fragments(affs, offsets, params, mode)
    else:
        raise ValueError(f"segment.fragments.method must be 'watershed' or 'mutex', got {method!r}")
    local = np.ascontiguousarray(labels[write_in_read])
    local, mapping = fastremap.renumber(local, preserve_zero=True, in_place=True)
    local = local.astype(np.uint64)
    count = int(local.max())
    if count > MAX_LOCAL:
        raise ValueError(f"block {block_index} has {count} fragments, more than {MAX_LOCAL}: use smaller blocks")
    base = fragment_id_base(block_index)
    local[local > 0] += base
    views = {}
    keys = np.array(sorted(k for k in mapping if k != 0), dtype=np.int64)
    values = np.array([mapping[k] for k in keys], dtype=np.uint64) + base
    for d in range(3):
        for name, index in (("down", write_in_read[d].start - 1), ("up", write_in_read[d].stop)):
            if not 0 <= index < labels.shape[d]:
                continue  # no halo on that side (volume edge or zero halo)
            sl = list(write_in_read)
            sl[d] = index
            plane = labels[tuple(sl)]
            idx = np.minimum(np.searchsorted(keys, plane), max(len(keys) - 1, 0))
            view = np.zeros(plane.shape, np.uint64)
            if len(keys):
                hit = keys[idx] == plane
                view[hit] = values[idx[hit]]
            views[f"{name}{d}"] = view
    return local, count, views
