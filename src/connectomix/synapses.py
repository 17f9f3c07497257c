"""Synaptic clefts and their partners: ``synapse_maps`` + ``segmentation`` -> ``synapses.parquet``.

The flow (:mod:`connectomix.blockwise`; Snakemake runs each step as a job, :func:`detect_synapses` runs them all in
one process):

1. ``setup``: create the empty ``cleft_fragments`` array (uint64, same grid as ``synapse_maps``).
2. ``block`` (per block of the shared :class:`~connectomix.blocks.BlockGrid`): read the cleft channel over the read
   ROI (halo for optional smoothing), threshold it, take connected components (cc3d) of the *write* ROI and write
   them with provisional ids ``cleft_id(first voxel)`` (:func:`cleft_id` packs the global voxel coordinates, so ids
   sort in C order and do not depend on the volume's shape: they stay when the dataset grows; the first voxel in C
   order inside the block is the piece's lowest voxel). Small pieces that touch no inner block face
   are complete and dropped at once; statistics go to ``{work_dir}/stats/{block}.parquet`` and the marker
   ``blocks/synapses/{block}.json`` is written last.
3. ``finish`` (one job) stitches: union-find (``scipy.sparse.csgraph``) over pairs of provisional ids that touch across block
   faces, with the component connectivity (6/18/26: diagonal neighbours across faces, edges and corners included),
   so the result equals connected components of the whole thresholded volume. Each cleft's stable id is
   ``cleft_id(its lowest voxel)`` (the smallest provisional id in it); clefts smaller than
   ``min_size_voxels`` are dropped. Then a pass over the blocks (halo = the partner radius) writes ``clefts`` with
   the final ids and collects, for every (cleft, segment) pair, the segment's voxels within ``partner_radius_nm``
   of that cleft (nearest-cleft assignment by a Euclidean distance transform in nm): their count, summed ``pre`` and
   ``post`` probabilities, voxels within ``contact_nm`` (contact area), and the point of the segment nearest to the
   cleft's centre; and, for every pair of segments, the voxel faces they share on the cleft (both voxels within
   ``interface_nm`` of it: the contact the cleft lies on, :func:`interface_faces`). Sums over blocks equal the
   whole-volume sums, so block size never changes the result.
4. Partner assignment (:func:`assign_partners`): candidates are segments with ``>= min_contact_voxels`` contact
   voxels. With ``pairing: interface`` (default) a cleft that lies on a contact of two candidates is judged between
   that pair alone (the pair sharing the most faces on it): a synapse joins the two cells whose contact it is, and
   the pre/post channels only decide which side is which (the channel means of small bystanders near a cleft are
   noisy: benchmarks/results/synapse_partners.md). A cleft on no contact (inside one segment, or
   ``pairing: candidates``) is judged among all its candidates: pre = the candidate with the highest mean ``pre``
   probability, post = the one with the highest mean ``post``. Rejected: ``no_segment`` (no candidate),
   ``autapse`` (the same segment wins both, with both probabilities high, and no other candidate has a signal: one
   object on both sides), ``unclear_polarity`` (a partner's own pre-minus-post margin below ``min_polarity``, a
   partner's probability below ``min_partner_prob``, or one segment winning both channels while another also has a
   signal). ``score`` = mean cleft probability x the smaller of the two polarity margins (0..1). With ``polarity: relative`` the sides are compared with each
   other instead (for maps whose pre/post levels are not calibrated but ordered): among two or more candidates,
   pre = the highest mean pre minus mean post, post = the lowest; the margin is half the difference of the two.

Output ``synapses.parquet`` (CAVE-style, one row per accepted cleft):

* ``id`` (uint64, = the cleft's label in ``clefts``), ``pre_pt_root_id``, ``post_pt_root_id`` (segment ids);
* ``pre_pt_position``, ``post_pt_position``, ``ctr_pt_position``: **lists [x, y, z] in nm** (CAVE order, x first;
  voxel (0, 0, 0) sits at the array's ``offset_nm``). ``ctr`` is the cleft's centre of mass; ``pre``/``post`` are
  voxels inside the partner segments next to the cleft (nearest to its centre among contact voxels);
* ``size`` (cleft voxels, int), ``size_nm2`` (cleft area: half its exposed surface, nm^2), ``score`` (0..1),
  ``cleft_prob``, ``pre_prob``, ``post_prob`` (mean probabilities), ``contact_voxels`` (pre, post).

``clefts.parquet`` (beside it) lists every cleft, accepted or not, with ``status`` (``accepted`` or the rejection
reason) and the same positions; ``synapses.json`` summarises the counts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from connectomix import config
from connectomix.blockwise import Stage, Step, grid_of, load_setup, new_setup, option, read_markers, run_step
from connectomix.blockwise import save_setup

SYNAPSE_MAPS = "synapse_maps"
FRAGMENTS = "cleft_fragments"
CLEFTS = "clefts"

STATS_COLUMNS = ["prov_id", "voxels", "sum_z", "sum_y", "sum_x", "sum_prob"]


def resolve(params: dict | None = None) -> dict:
    """The full parameter set: ``params`` (possibly partial, as in the config) over the schema's defaults."""
    params = config.resolve("synapses", params)
    if params["connectivity"] not in (6, 18, 26):
        raise ValueError(f"synapses.connectivity must be 6, 18 or 26, got {params['connectivity']}")
    if params["polarity"] not in ("absolute", "relative"):
        raise ValueError(f"synapses.polarity must be 'absolute' or 'relative', got {params['polarity']!r}")
    if params["pairing"] not in ("interface", "candidates"):
        raise ValueError(f"synapses.pairing must be 'interface' or 'candidates', got {params['pairing']!r}")
    if not 0 <= params["interface_nm"] <= params["partner_radius_nm"]:
        raise ValueError(f"synapses.interface_nm = {params['interface_nm']}: must lie in 0..partner_radius_nm "
                         f"({params['partner_radius_nm']})")
    return params


def cleft_halo(params: dict, voxel_size) -> tuple[int, int, int]:
    """Halo (voxels) of the cleft block jobs: 3 sigma of the optional smoothing (at least 1 for face reads)."""
    sigma = params["smooth_sigma_nm"]
    return tuple(max(1, math.ceil(3 * sigma / v)) if sigma > 0 else 0 for v in voxel_size)  # type: ignore


def partner_halo(params: dict, voxel_size) -> tuple[int, int, int]:
    """Halo (voxels) of the partner pass: the partner radius, plus one voxel for the surface-area faces."""
    return tuple(math.ceil(params["partner_radius_nm"] / v) + 1 for v in voxel_size)  # type: ignore


def _probability(values: np.ndarray) -> np.ndarray:
    """uint8 maps (value/255) or float maps as float32 probabilities."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255)
    return values.astype(np.float32, copy=False)


# --- 2. per block: threshold + connected components ------------------------------------------------------------


def threshold_cleft(cleft_read: np.ndarray, voxel_size, params: dict) -> np.ndarray:
    """Boolean cleft mask of a read ROI: optional Gaussian smoothing (sigma in nm), then ``> threshold``."""
    prob = _probability(cleft_read)
    sigma = params["smooth_sigma_nm"]
    if sigma > 0:
        from scipy import ndimage

        prob = ndimage.gaussian_filter(prob, [sigma / v for v in voxel_size], mode="nearest")
    return prob > params["threshold"]


COORD_BITS = 21  # per axis: volumes up to 2,097,152 voxels along each axis


def cleft_id(zyx) -> np.ndarray:
    """Cleft id of a global voxel (z, y, x), or of arrays of them: ``1 + (z << 42 | y << 21 | x)``. The packing keeps
    C order (the lowest voxel has the smallest id), stays below 2**63, and does not depend on the volume's shape."""
    z, y, x = (np.asarray(c, dtype=np.uint64) for c in zyx)
    if max(int(np.max(c, initial=0)) for c in (z, y, x)) >= 1 << COORD_BITS:
        raise ValueError(f"voxel coordinates must be below {1 << COORD_BITS} per axis for cleft ids")
    bits = np.uint64(COORD_BITS)
    return ((z << bits | y) << bits | x) + np.uint64(1)


def label_block(mask: np.ndarray, prob: np.ndarray, write_offset, params: dict, inner_faces=((True, True),) * 3):
    """Connected components of one block's write-ROI mask with provisional global ids.

    ``inner_faces[axis] = (low, high)`` says which faces border another block. Returns ``(labels, stats)``:
    uint64 labels (0 = background; id = :func:`cleft_id` of the piece's first voxel) and a DataFrame
    with ``prov_id, voxels, sum_z, sum_y, sum_x`` (global voxel coordinates) and ``sum_prob``.
    """
    import cc3d
    import pandas as pd

    local = cc3d.connected_components(mask, connectivity=params["connectivity"], out_dtype=np.uint32)
    n = int(local.max())
    if n == 0:
        empty = {c: np.zeros(0, np.float64) for c in STATS_COLUMNS}
        empty.update(prov_id=np.zeros(0, np.uint64), voxels=np.zeros(0, np.int64))
        return np.zeros(mask.shape, np.uint64), pd.DataFrame(empty)
    flat = local.ravel()
    # cc3d numbers components in order of first appearance (C order), so a sorted unique gives first indices.
    _, first = np.unique(flat, return_index=True)
    first = first[1:]  # drop background
    coords = np.unravel_index(first, mask.shape)
    gcoords = tuple(c + o for c, o in zip(coords, write_offset))
    prov = cleft_id(gcoords)
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = []
    for axis in range(3):
        coord = np.arange(mask.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]) + write_offset[axis]
        sums.append(np.bincount(flat, weights=np.broadcast_to(coord, mask.shape).ravel(), minlength=n + 1)[1:])
    sum_prob = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n + 1)[1:]
    # Pieces touching an inner face may continue in the next block: keep them whatever their size.
    touching = np.zeros(n + 1, bool)
    for axis in range(3):
        for side, inner in zip((0, -1), inner_faces[axis]):
            if inner:
                face = np.take(local, side, axis=axis)
                touching[np.unique(face)] = True
    keep = (counts >= params["min_size_voxels"]) | touching[1:]
    lut = np.zeros(n + 1, np.uint64)
    lut[1:][keep] = prov[keep]
    labels = lut[local]
    stats = pd.DataFrame({"prov_id": prov[keep], "voxels": counts[keep].astype(np.int64), "sum_z": sums[0][keep],
                          "sum_y": sums[1][keep], "sum_x": sums[2][keep], "sum_prob": sum_prob[keep]})
    return labels, stats


def _inner_faces(grid, block):
    return tuple((block.index[a] > 0, block.index[a] + 1 < grid.grid_shape[a]) for a in range(3))


def _channel(meta, name: str) -> int:
    channels = list(meta.channels or ())
    if name not in channels:
        raise ValueError(f"{meta.name} has channels {channels}, expected a '{name}' channel")
    return channels.index(name)


def setup(volume, work_dir, params: dict | None, block_shape, chunk_shape=None, marker_dir=None,
          maps: str = SYNAPSE_MAPS, segmentation: str = "segmentation") -> dict:
    """Create the empty ``cleft_fragments`` array and write ``{work_dir}/setup.json`` (resolved parameters, grid
    with the cleft halo, the map and segmentation arrays).

    An existing array with the same layout is kept (resized in place when the dataset grew, ``io.ensure_array``),
    so the blocks done before keep their pieces; cleft ids do not depend on the volume's shape (:func:`cleft_id`).
    """
    from connectomix import io, provenance

    params = resolve(params)
    meta = io.read_meta(volume, maps)
    _channel(meta, "cleft")
    shape = meta.spatial_shape
    chunks = tuple(chunk_shape or meta.spatial_chunks)
    record = new_setup("synapses", volume, work_dir, shape=shape, block_shape=block_shape, chunk_shape=chunks,
                       halo=cleft_halo(params, meta.voxel_size), voxel_size=meta.voxel_size,
                       offset_nm=meta.offset_nm, params=params, provenance=provenance.record(params),
                       marker_dir=marker_dir, maps=maps, segmentation=segmentation)
    io.ensure_array(volume, FRAGMENTS, shape, np.uint64, chunks, meta.voxel_size, meta.offset_nm,
                    is_label=True, attrs={"provenance": record["provenance"]})
    return save_setup(record)


def cleft_block(s: dict, block, context=None) -> dict:
    """Step 2 for one block: threshold, label, write ``cleft_fragments`` and the block's statistics."""
    from connectomix import io
    from connectomix.blocks import atomic_write_parquet

    params = s["params"]
    meta = io.read_meta(s["volume"], s["maps"])
    maps = io.open_array(s["volume"], s["maps"])
    ci = _channel(meta, "cleft")
    cleft_read = np.asarray(maps[(ci, *block.read.slices)])
    mask = threshold_cleft(cleft_read, s["voxel_size"], params)[block.write_in_read]
    prob = _probability(cleft_read[block.write_in_read])
    labels, stats = label_block(mask, prob, block.write.offset, params, _inner_faces(grid_of(s), block))
    io.open_array(s["volume"], FRAGMENTS, mode="r+")[block.write.slices] = labels
    atomic_write_parquet(stats, Path(s["work_dir"]) / "stats" / f"{block.id}.parquet")
    return {"pieces": int(len(stats)), "voxels": int(stats["voxels"].sum())}


# --- 3. stitching ------------------------------------------------------------------------------------------------


def _face_shifts(connectivity: int) -> list[tuple[int, int]]:
    """In-plane shifts (du, dv) between a voxel and its neighbours in the next plane."""
    shifts = [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
    limit = {6: 0, 18: 1, 26: 2}[connectivity]
    return [(du, dv) for du, dv in shifts if abs(du) + abs(dv) <= limit]


def face_pairs(read, grid, block, axis: int, connectivity: int) -> np.ndarray:
    """Pairs (id_low, id_high) of labels touching across ``block``'s high face on ``axis``.

    ``read(slices)`` returns the label array for a tuple of slices (global voxels). The low plane is the block's
    last plane restricted to its write ROI; the high plane (first plane of the next block) is grown by one voxel
    in-plane, so diagonal contacts with blocks that share only an edge or a corner are found too.
    """
    c = block.write.end[axis]
    others = [a for a in range(3) if a != axis]
    lo_sl = [slice(o, e) for o, e in zip(block.write.offset, block.write.end)]
    lo_sl[axis] = slice(c - 1, c)
    hi_sl = list(lo_sl)
    hi_sl[axis] = slice(c, c + 1)
    for a in others:
        hi_sl[a] = slice(max(0, block.write.offset[a] - 1), min(grid.volume_shape[a], block.write.end[a] + 1))
    lo = np.squeeze(np.asarray(read(tuple(lo_sl))), axis=axis)
    hi = np.squeeze(np.asarray(read(tuple(hi_sl))), axis=axis)
    # Pad the high plane so hi_pad[1 + u, 1 + v] lies opposite lo[u, v].
    nu, nv = lo.shape
    hi_pad = np.zeros((nu + 2, nv + 2), hi.dtype)
    u0 = 1 - (block.write.offset[others[0]] - hi_sl[others[0]].start)
    v0 = 1 - (block.write.offset[others[1]] - hi_sl[others[1]].start)
    hi_pad[u0:u0 + hi.shape[0], v0:v0 + hi.shape[1]] = hi
    pairs = []
    for du, dv in _face_shifts(connectivity):
        h = hi_pad[1 + du:1 + du + nu, 1 + dv:1 + dv + nv]
        both = (lo > 0) & (h > 0)
        if both.any():
            pairs.append(np.stack([lo[both], h[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(pairs).astype(np.uint64), axis=0)


def merge_pieces(stats, pairs: np.ndarray, voxel_size, offset_nm, min_size: int):
    """Union-find over touching pieces. Returns ``(mapping, clefts)``.

    ``mapping``: DataFrame ``prov_id -> id`` (0 where the merged cleft is smaller than ``min_size``);
    ``clefts``: one row per kept cleft: ``id`` (= smallest provisional id = ``cleft_id`` of its lowest voxel),
    ``voxels``, ``cleft_prob`` (mean), centre of mass ``ctr_z``, ``ctr_y``, ``ctr_x`` (voxels) and ``_nm``.
    """
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    stats = stats.sort_values("prov_id").reset_index(drop=True)
    ids = stats["prov_id"].to_numpy(np.uint64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate provisional cleft ids across blocks (blocks written by different setups?)")
    n = len(ids)
    if len(pairs):
        a = np.searchsorted(ids, pairs[:, 0])
        b = np.searchsorted(ids, pairs[:, 1])
        ok = (a < n) & (b < n)
        ok[ok] &= (ids[a[ok]] == pairs[ok, 0]) & (ids[b[ok]] == pairs[ok, 1])
        if not ok.all():
            raise ValueError("a face pair names a cleft piece missing from the block statistics")
        graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    else:
        graph = coo_matrix((n, n))
    _, comp = connected_components(graph, directed=False)
    stats = stats.assign(comp=comp)
    agg = stats.groupby("comp", sort=False).agg(
        id=("prov_id", "min"), voxels=("voxels", "sum"), sum_z=("sum_z", "sum"), sum_y=("sum_y", "sum"),
        sum_x=("sum_x", "sum"), sum_prob=("sum_prob", "sum"))
    agg["keep"] = agg["voxels"] >= min_size
    final = stats["comp"].map(agg["id"].where(agg["keep"], 0)).to_numpy(np.uint64)
    mapping = pd.DataFrame({"prov_id": ids, "id": final})
    kept = agg[agg["keep"]].sort_values("id").reset_index(drop=True)
    clefts = pd.DataFrame({"id": kept["id"].to_numpy(np.uint64), "voxels": kept["voxels"].astype(np.int64),
                           "cleft_prob": kept["sum_prob"] / kept["voxels"]})
    for a, axis in enumerate("zyx"):
        clefts[f"ctr_{axis}"] = kept[f"sum_{axis}"] / kept["voxels"]
        clefts[f"ctr_{axis}_nm"] = offset_nm[a] + clefts[f"ctr_{axis}"] * voxel_size[a]
    return mapping, clefts


def _remap(labels: np.ndarray, mapping) -> np.ndarray:
    """Provisional -> final ids (ids not in ``mapping``, e.g. dropped small pieces, become 0)."""
    keys = mapping["prov_id"].to_numpy(np.uint64)
    vals = mapping["id"].to_numpy(np.uint64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    flat = labels.ravel()
    pos = np.searchsorted(keys, flat)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros_like(labels)
    hit = keys[pos] == flat
    return np.where(hit, vals[pos], 0).astype(np.uint64).reshape(labels.shape)


# --- 3b. partner statistics (per block of the stitch job) --------------------------------------------------------


PAIR_COLUMNS = ["id", "segment", "voxels", "sum_pre", "sum_post", "contact", "pt_dist", "pt_z", "pt_y", "pt_x"]


def partner_stats_block(clefts_read, seg_read, pre_read, post_read, write_in_read, read_offset, voxel_size,
                        centres: dict, params: dict, volume_end=None):
    """Per (cleft, segment) sums over one block's write ROI; arrays hold the read ROI (halo >= partner radius).

    Every voxel of a segment within ``partner_radius_nm`` of a cleft (Euclidean, nm) counts for its nearest cleft.
    Returns ``(pairs, area, interfaces)``: pairs with :data:`PAIR_COLUMNS` (``contact`` = voxels within
    ``contact_nm``; ``pt_*`` = the candidate point, global voxels, of the contact voxel nearest to the cleft centre,
    or of any shell voxel when none is in contact; ``pt_dist`` its distance in nm, +1e9 when not in contact); area:
    DataFrame ``id, area_nm2_x2`` (exposed cleft surface, nm^2, summed over this block's cleft voxels); interfaces:
    :func:`interface_faces` of the block.
    """
    import pandas as pd
    from scipy import ndimage

    voxel_size = np.asarray(voxel_size, float)
    empty = pd.DataFrame({c: np.zeros(0, np.uint64 if c in ("id", "segment") else np.float64) for c in PAIR_COLUMNS})
    mask = clefts_read > 0
    if not mask.any():
        return empty, pd.DataFrame({"id": np.zeros(0, np.uint64), "area_nm2_x2": np.zeros(0)}), _no_interfaces()
    dist_read, idx = ndimage.distance_transform_edt(~mask, sampling=voxel_size, return_indices=True)
    nearest_read = clefts_read[tuple(idx)]
    interfaces = interface_faces(seg_read, nearest_read, dist_read <= params["interface_nm"], write_in_read)
    nearest = nearest_read[write_in_read]
    dist = dist_read[write_in_read]
    seg = seg_read[write_in_read]
    sel = (dist <= params["partner_radius_nm"]) & (seg > 0) & (nearest > 0)
    pairs = empty
    if sel.any():
        where = np.nonzero(sel)
        w0 = [s.start for s in write_in_read]
        g = [where[a] + w0[a] + read_offset[a] for a in range(3)]  # global voxel coordinates
        cid = nearest[sel].astype(np.uint64)
        d = dist[sel]
        contact = d <= params["contact_nm"]
        ctr = np.array([centres[int(c)] for c in np.unique(cid)])
        ctr_of = ctr[np.searchsorted(np.unique(cid), cid)]
        dc = np.sqrt(sum(((g[a] - ctr_of[:, a]) * voxel_size[a]) ** 2 for a in range(3)))
        df = pd.DataFrame({
            "id": cid, "segment": seg[sel].astype(np.uint64),
            "pre": _probability(pre_read[write_in_read][sel]), "post": _probability(post_read[write_in_read][sel]),
            "contact": contact.astype(np.int64), "pt_dist": np.where(contact, dc, dc + 1e9),
            "pt_z": g[0], "pt_y": g[1], "pt_x": g[2],
        })
        sums = df.groupby(["id", "segment"], sort=True).agg(
            voxels=("pre", "size"), sum_pre=("pre", "sum"), sum_post=("post", "sum"), contact=("contact", "sum"))
        best = df.sort_values("pt_dist", kind="stable").drop_duplicates(["id", "segment"]).set_index(["id", "segment"])
        pairs = sums.join(best[["pt_dist", "pt_z", "pt_y", "pt_x"]]).reset_index()[PAIR_COLUMNS]
    # Exposed surface: faces between a cleft voxel of the write ROI and a voxel with another label. The volume's
    # outer faces do not count (edge padding repeats the label there).
    padded = np.pad(clefts_read, 1, mode="edge")
    inner = tuple(slice(s.start + 1, s.stop + 1) for s in write_in_read)
    centre = padded[inner]
    lab = []
    wts = []
    for axis in range(3):
        face = float(np.prod([voxel_size[a] for a in range(3) if a != axis]))
        for step in (-1, 1):
            sh = list(inner)
            sh[axis] = slice(inner[axis].start + step, inner[axis].stop + step)
            exposed = (centre > 0) & (padded[tuple(sh)] != centre)
            lab.append(centre[exposed])
            wts.append(np.full(int(exposed.sum()), face))
    lab = np.concatenate(lab)
    area = (pd.DataFrame({"id": lab.astype(np.uint64), "area_nm2_x2": np.concatenate(wts)})
            .groupby("id", sort=True)["area_nm2_x2"].sum().reset_index())
    return pairs, area, interfaces


INTERFACE_COLUMNS = ["id", "segment_a", "segment_b", "faces"]


def interface_faces(seg_read, nearest_read, near_read, write_in_read):
    """Contacts between segments on each cleft: per (cleft, segment a < segment b), the voxel faces between a voxel
    of a and a voxel of b (6-neighbours) that are both ``near`` (within ``interface_nm``) the same cleft.

    ``nearest_read`` holds each read-ROI voxel's nearest cleft id (0: none). A face belongs to the block that owns
    its lower voxel (write ROI); its upper voxel may lie in the halo, so sums over blocks equal the whole volume's.
    """
    import pandas as pd

    parts = []
    for axis in range(3):
        w = write_in_read[axis]
        stop = min(w.stop + 1, seg_read.shape[axis])  # one plane into the halo, where there is one
        lower, upper = list(write_in_read), list(write_in_read)
        lower[axis], upper[axis] = slice(w.start, stop - 1), slice(w.start + 1, stop)
        lower, upper = tuple(lower), tuple(upper)
        a, b = seg_read[lower], seg_read[upper]
        cleft = nearest_read[lower]
        ok = (a > 0) & (b > 0) & (a != b) & (cleft > 0) & (cleft == nearest_read[upper]) & near_read[lower] & \
            near_read[upper]
        a, b = a[ok].astype(np.uint64), b[ok].astype(np.uint64)
        parts.append(pd.DataFrame({"id": cleft[ok].astype(np.uint64), "segment_a": np.minimum(a, b),
                                   "segment_b": np.maximum(a, b)}))
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        return _no_interfaces()
    return df.groupby(["id", "segment_a", "segment_b"], sort=True).size().rename("faces").reset_index()[
        INTERFACE_COLUMNS]


def _no_interfaces():
    import pandas as pd

    return pd.DataFrame({c: np.zeros(0, np.int64 if c == "faces" else np.uint64) for c in INTERFACE_COLUMNS})


def combine_interfaces(parts):
    """Sum per-block :func:`interface_faces` tables."""
    import pandas as pd

    df = pd.concat(parts, ignore_index=True)
    return df.groupby(["id", "segment_a", "segment_b"], sort=True)["faces"].sum().reset_index()


def combine_pairs(parts):
    """Sum per-block pair statistics; keep the candidate point nearest the cleft centre."""
    import pandas as pd

    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        return df
    sums = df.groupby(["id", "segment"], sort=True)[["voxels", "sum_pre", "sum_post", "contact"]].sum()
    best = df.sort_values(["pt_dist", "pt_z", "pt_y", "pt_x"], kind="stable").drop_duplicates(["id", "segment"])
    best = best.set_index(["id", "segment"])[["pt_z", "pt_y", "pt_x"]]
    return sums.join(best).reset_index()


# --- 4. partner assignment ---------------------------------------------------------------------------------------


def assign_partners(clefts, pairs, params: dict, interfaces=None):
    """Pick one pre and one post segment per cleft, or a rejection reason (see the module docstring).

    ``clefts``: one row per cleft (``id``, ``cleft_prob``, ...); ``pairs``: combined pair statistics;
    ``interfaces``: combined :func:`interface_faces` (used with ``pairing: interface``). Returns ``clefts`` with
    ``status``, ``pre``, ``post`` (0 when rejected), ``pre_prob``, ``post_prob`` (means over the partner's shell
    voxels), ``polarity`` (the smaller partner margin), ``score``, ``pre_contact``, ``post_contact``,
    ``interface`` (faces shared by the chosen pair on the cleft; 0 when the pair did not come from an interface)
    and the partner points ``pre_pt_z..``, ``post_pt_z..`` (voxels).
    """
    out = clefts.copy().reset_index(drop=True)
    n = len(out)
    for col, dtype in (("pre", np.uint64), ("post", np.uint64)):
        out[col] = np.zeros(n, dtype)
    for col in ("pre_prob", "post_prob", "polarity", "score", "pre_contact", "post_contact", "pre_pt_z", "pre_pt_y",
                "pre_pt_x", "post_pt_z", "post_pt_y", "post_pt_x"):
        out[col] = np.nan
    out["n_candidates"] = 0
    out["interface"] = 0
    out["status"] = "no_segment"
    if n == 0 or pairs is None or len(pairs) == 0:
        return out
    cand = pairs[pairs["contact"] >= params["min_contact_voxels"]].copy()
    cand["pre_mean"] = cand["sum_pre"] / cand["voxels"]
    cand["post_mean"] = cand["sum_post"] / cand["voxels"]
    contact_pair = {}
    if params["pairing"] == "interface" and interfaces is not None and len(interfaces):
        contact_pair = _largest_interfaces(interfaces, cand)
    row = {cid: i for i, cid in enumerate(out["id"].to_numpy(np.uint64).tolist())}
    cols = {c: out[c].to_numpy(copy=True) for c in out.columns if c not in ("id", "cleft_prob")}
    cols["status"] = cols["status"].astype(object)
    for cid, group in cand.groupby("id", sort=False):
        i = row.get(int(cid))
        if i is None:
            continue
        cols["n_candidates"][i] = len(group)
        if int(cid) in contact_pair:  # the two sides of the contact the cleft lies on; polarity only orders them
            a, b, faces = contact_pair[int(cid)]
            group = group[group["segment"].isin([a, b])]
            cols["interface"][i] = faces
        if params["polarity"] == "relative" and len(group) > 1:
            # the sides compared with each other: pre = the most pre-minus-post candidate, post = the least of the rest
            side = group.assign(d=group["pre_mean"] - group["post_mean"])
            ranked = side.sort_values(["d", "contact", "segment"], ascending=[False, False, True])
            by_pre = ranked.iloc[0]
            by_post = ranked.iloc[1:].sort_values(["d", "contact", "segment"], ascending=[True, False, True]).iloc[0]
            pol_pre = pol_post = (by_pre["d"] - by_post["d"]) / 2
        else:
            # Highest mean first; ties broken by contact, then by the smaller segment id (deterministic).
            by_pre = group.sort_values(["pre_mean", "contact", "segment"], ascending=[False, False, True]).iloc[0]
            by_post = group.sort_values(["post_mean", "contact", "segment"], ascending=[False, False, True]).iloc[0]
            pol_pre = by_pre["pre_mean"] - by_pre["post_mean"]
            pol_post = by_post["post_mean"] - by_post["pre_mean"]
        strong = by_pre["pre_mean"] >= params["min_partner_prob"] and by_post["post_mean"] >= params["min_partner_prob"]
        if by_pre["segment"] == by_post["segment"]:
            # One object carries both signals: an autapse (or a merge) when no other candidate has a signal.
            others = group[group["segment"] != by_pre["segment"]]
            other = max(others["pre_mean"].max(), others["post_mean"].max()) if len(others) else 0.0
            status = "autapse" if strong and other < params["min_partner_prob"] else "unclear_polarity"
        elif not strong or min(pol_pre, pol_post) < params["min_polarity"]:
            status = "unclear_polarity"
        else:
            status = "accepted"
        cols["status"][i] = status
        for key, value in (("pre_prob", by_pre["pre_mean"]), ("post_prob", by_post["post_mean"]),
                           ("polarity", min(pol_pre, pol_post)), ("pre_contact", by_pre["contact"]),
                           ("post_contact", by_post["contact"])):
            cols[key][i] = value
        for side, r in (("pre", by_pre), ("post", by_post)):
            for axis in "zyx":
                cols[f"{side}_pt_{axis}"][i] = r[f"pt_{axis}"]
        if status == "accepted":
            cols["pre"][i] = np.uint64(by_pre["segment"])
            cols["post"][i] = np.uint64(by_post["segment"])
    for key, values in cols.items():
        out[key] = values
    out["score"] = out["cleft_prob"] * out["polarity"].clip(0, 1).fillna(0)
    return out


def _largest_interfaces(interfaces, cand) -> dict:
    """Per cleft, the pair of candidates sharing the most interface faces on it: {cleft: (a, b, faces)}; ties go
    to the lower segment ids."""
    keys = cand[["id", "segment"]].astype(np.uint64)
    both = (interfaces.astype({"id": np.uint64, "segment_a": np.uint64, "segment_b": np.uint64})
            .merge(keys.rename(columns={"segment": "segment_a"}), on=["id", "segment_a"])
            .merge(keys.rename(columns={"segment": "segment_b"}), on=["id", "segment_b"]))
    best = (both.sort_values(["id", "faces", "segment_a", "segment_b"], ascending=[True, False, True, True])
            .drop_duplicates("id"))
    return {int(c): (np.uint64(a), np.uint64(b), int(f))
            for c, a, b, f in zip(best["id"], best["segment_a"], best["segment_b"], best["faces"])}


def synapse_table(assigned, voxel_size, offset_nm):
    """The CAVE-style ``synapses.parquet`` rows (accepted clefts only; positions as [x, y, z] nm lists)."""
    import pandas as pd

    acc = assigned[assigned["status"] == "accepted"].reset_index(drop=True)

    def points(prefix):
        cols = [f"{prefix}_{axis}" for axis in "xyz"]
        vs = [voxel_size[2], voxel_size[1], voxel_size[0]]
        off = [offset_nm[2], offset_nm[1], offset_nm[0]]
        xyz = acc[cols].to_numpy(float) * vs + off
        return [list(map(float, p)) for p in xyz]

    return pd.DataFrame({
        "id": acc["id"].to_numpy(np.uint64),
        "pre_pt_position": points("pre_pt"),
        "post_pt_position": points("post_pt"),
        "ctr_pt_position": points("ctr"),
        "pre_pt_root_id": acc["pre"].to_numpy(np.uint64),
        "post_pt_root_id": acc["post"].to_numpy(np.uint64),
        "size": acc["voxels"].to_numpy(np.int64),
        "size_nm2": acc["size_nm2"].to_numpy(float),
        "score": acc["score"].to_numpy(float),
        "cleft_prob": acc["cleft_prob"].to_numpy(float),
        "pre_prob": acc["pre_prob"].to_numpy(float),
        "post_prob": acc["post_prob"].to_numpy(float),
        "pre_contact_voxels": acc["pre_contact"].to_numpy(np.int64),
        "post_contact_voxels": acc["post_contact"].to_numpy(np.int64),
    })


def finish(work_dir, out_synapses, out_clefts=None, summary=None) -> dict:
    """Step 3 + 4: stitch, write ``clefts``, gather partner statistics, assign, write the tables (last: summary)."""
    import pandas as pd

    from connectomix import io, provenance
    from connectomix.blocks import atomic_write_json, atomic_write_parquet

    start = time.perf_counter()
    s = load_setup(work_dir, "synapses")
    read_markers(s, "synapses")  # every block done
    params = s["params"]
    vs, off = s["voxel_size"], s["offset_nm"]
    grid = grid_of(s, (0, 0, 0))
    frag = io.open_array(s["volume"], FRAGMENTS)
    stats = pd.concat([pd.read_parquet(Path(work_dir) / "stats" / f"{b}.parquet") for b in grid.ids()],
                      ignore_index=True)
    pairs = [np.zeros((0, 2), np.uint64)]
    for block in grid:
        for axis in range(3):
            if block.index[axis] + 1 < grid.grid_shape[axis]:
                pairs.append(face_pairs(lambda sl: frag[sl], grid, block, axis, params["connectivity"]))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    mapping, clefts = merge_pieces(stats, pairs, vs, off, params["min_size_voxels"])

    # Partner pass: blockwise with a halo of the partner radius; also writes `clefts` with the final ids.
    meta = io.read_meta(s["volume"], s["maps"])
    maps = io.open_array(s["volume"], s["maps"])
    ci_pre, ci_post = _channel(meta, "pre"), _channel(meta, "post")
    seg = io.open_array(s["volume"], s["segmentation"])
    prov = provenance.record(params, {"synapse_maps": provenance.array_digest(s["volume"], s["maps"]),
                                      "segmentation": provenance.array_digest(s["volume"], s["segmentation"])})
    out = io.create_array(s["volume"], CLEFTS, s["shape"], np.uint64, s["chunk_shape"], vs, off, is_label=True,
                          attrs={"provenance": prov})
    pgrid = grid_of(s, partner_halo(params, vs))
    centres = {int(r.id): (r.ctr_z, r.ctr_y, r.ctr_x) for r in clefts.itertuples()}
    parts, areas, faces, digests = [], [], [], {}
    for block in pgrid:
        lab = _remap(np.asarray(frag[block.read.slices]), mapping)
        out[block.write.slices] = lab[block.write_in_read]
        digests[block.id] = provenance.data_digest(lab[block.write_in_read])
        if not lab.any():
            continue
        p, a, f = partner_stats_block(lab, np.asarray(seg[block.read.slices]),
                                      np.asarray(maps[(ci_pre, *block.read.slices)]),
                                      np.asarray(maps[(ci_post, *block.read.slices)]), block.write_in_read,
                                      block.read.offset, vs, centres, params)
        parts.append(p)
        areas.append(a)
        faces.append(f)
    provenance.set_array_digest(s["volume"], CLEFTS, provenance.merkle_digest(out.shape, out.dtype, digests))
    pair_stats = combine_pairs(parts) if parts else None
    area = (pd.concat(areas).groupby("id")["area_nm2_x2"].sum() / 2) if areas else pd.Series(dtype=float)
    clefts["size_nm2"] = clefts["id"].map(area).fillna(0.0).to_numpy(float)
    assigned = assign_partners(clefts, pair_stats, params, combine_interfaces(faces) if faces else None)
    table = synapse_table(assigned, vs, off)
    atomic_write_parquet(table, Path(out_synapses))
    if out_clefts:
        atomic_write_parquet(assigned, Path(out_clefts))
    counts = assigned["status"].value_counts().to_dict()
    result = {
        "stage": "synapses", "clefts": int(len(assigned)), "synapses": int(len(table)),
        "status": {k: int(v) for k, v in counts.items()}, "pieces": int(len(stats)),
        "face_pairs": int(len(pairs)), "seconds": round(time.perf_counter() - start, 3),
        "provenance": prov,
    }
    if summary:
        atomic_write_json(summary, result)
    return result


STAGE = Stage("synapses", setup, (Step("synapses", cleft_block),), finish,
              setup_options=(option("--maps", default=SYNAPSE_MAPS, help="synapse map array (channels cleft, pre, "
                                                                        "post)"),
                             option("--segmentation", default="segmentation", help="segment label array")),
              finish_options=(option("--synapses", dest="out_synapses", required=True,
                                     help="synapses.parquet to write"),
                              option("--clefts", dest="out_clefts", help="clefts.parquet (every cleft with its "
                                                                        "status)")))


def detect_synapses(volume, work_dir, params=None, block_shape=(24, 192, 192), out_synapses=None, maps=SYNAPSE_MAPS,
                    segmentation="segmentation") -> dict:
    """All steps in one process, through the workflow's runner (tests, notebooks, small volumes). Returns the
    finish summary."""
    work_dir = Path(work_dir)
    setup(volume, work_dir, params, block_shape, maps=maps, segmentation=segmentation)
    run_step(STAGE, work_dir)
    return finish(work_dir, out_synapses or work_dir / "synapses.parquet", work_dir / "clefts.parquet",
                  work_dir / "synapses.json")


# --- synapse maps from ground truth (for running and testing before the U-Net exists) ----------------------------


def maps_from_ground_truth(labels: np.ndarray, clefts: np.ndarray, synapses, voxel_size, radius_nm: float = 80.0,
                           noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """uint8 (3, z, y, x) ``cleft, pre, post`` maps made from ground truth, with noise.

    cleft: 0.9 on cleft voxels; pre (post): 0.9 on voxels of the synapse's ``pre`` (``post``) object within
    ``radius_nm`` of its cleft; 0.05 elsewhere; then Gaussian noise (sd ``noise``) and clipping to 0..1.
    ``synapses`` is a table with ``id, pre, post`` (as ``gt/synapses.parquet``).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.full((3,) + labels.shape, 0.05, np.float32)
    out[0][clefts > 0] = 0.9
    if (clefts > 0).any():
        dist, idx = ndimage.distance_transform_edt(clefts == 0, sampling=voxel_size, return_indices=True)
        near = clefts[tuple(idx)]
        near[dist > radius_nm] = 0
        pre = dict(zip(np.asarray(synapses["id"], np.uint64).tolist(), np.asarray(synapses["pre"], np.uint64).tolist()))
        post = dict(zip(np.asarray(synapses["id"], np.uint64).tolist(), np.asarray(synapses["post"], np.uint64).tolist()))
        keys = np.array(sorted(pre), np.uint64)
        if len(keys):
            pos = np.clip(np.searchsorted(keys, near), 0, len(keys) - 1)
            known = (keys[pos] == near) & (near > 0)
            pre_of = np.array([pre[int(k)] for k in keys], np.uint64)[pos]
            post_of = np.array([post[int(k)] for k in keys], np.uint64)[pos]
            out[1][known & (labels == pre_of)] = 0.9
            out[2][known & (labels == post_of)] = 0.9
    if noise > 0:
        out += rng.normal(0, noise, out.shape).astype(np.float32)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def write_ground_truth_maps(volume, name: str = "synapse_maps_gt", radius_nm: float = 80.0, noise: float = 0.1,
                            seed: int = 0, gt_dir=None) -> str:
    """Write :func:`maps_from_ground_truth` of a phantom's ``gt/labels`` and ``gt/clefts`` as the array ``name``."""
    import pandas as pd

    from connectomix import io

    meta = io.read_meta(volume, "gt/labels")
    labels = np.asarray(io.open_array(volume, "gt/labels")[...])
    clefts = np.asarray(io.open_array(volume, "gt/clefts")[...])
    gt_dir = Path(gt_dir) if gt_dir else Path(volume).parent / "gt"
    syn = pd.read_parquet(gt_dir / "synapses.parquet")
    maps = maps_from_ground_truth(labels, clefts, syn, meta.voxel_size, radius_nm, noise, seed)
    io.write_full(volume, name, maps, (3,) + tuple(meta.spatial_chunks), meta.voxel_size, meta.offset_nm,
                  channels=("cleft", "pre", "post"), attrs={"source": "ground truth", "noise": noise})
    return name


# --- CLI -----------------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """``synapses setup | block | finish`` (connectomix.blockwise) and ``synapses gt-maps``."""
    from connectomix.blockwise import add_arguments as blockwise_arguments

    sub = blockwise_arguments(parser, STAGE)
    gt = sub.add_parser("gt-maps", help="write synapse maps made from a phantom's ground truth (with noise)")
    gt.add_argument("--volume", required=True)
    gt.add_argument("--name", default="synapse_maps_gt", help="array to write")
    gt.add_argument("--radius-nm", type=float, default=80.0)
    gt.add_argument("--noise", type=float, default=0.1)
    gt.add_argument("--seed", type=int, default=0)
    gt.set_defaults(func=lambda args: print(write_ground_truth_maps(args.volume, args.name, args.radius_nm,
                                                                    args.noise, args.seed)))


def run(args) -> int:
    """Run one ``connectomix synapses`` action."""
    return int(args.func(args) or 0)
