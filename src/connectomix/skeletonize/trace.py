"""kimimaro on one block: trace the read ROI, crop the skeletons to the write ROI (face vertices where an edge
crosses a block face), and the block's pieces file. kimimaro works in (x, y, z); the conversion to connectomix's
(z, y, x) happens here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from connectomix.blocks import Block, Roi
from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import mask_somata
from connectomix.skeletonize.tree import Skel, _to_nm


# --- kimimaro ----------------------------------------------------------------------------------------------


def kimimaro_skeletons(
    labels: np.ndarray,
    voxel_size: Sequence[float],
    params: dict | None = None,
    parallel: int = 1,
    object_ids: Iterable[int] | None = None,
    origin: Sequence[int] = (0, 0, 0),
    volume_shape: Sequence[int] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """kimimaro on a (z, y, x) label array: ``{label: (vertices in voxels (z, y, x), edges, radii nm)}``.

    The array may be a block's read ROI (its voxel 0 at the global voxel ``origin`` of a volume of
    ``volume_shape``; default: the array is the whole volume). Components of ``dust_threshold`` voxels or fewer are
    dropped as kimimaro drops them in the whole volume; in a block, by ``clear_dust``: a small piece cut off by a
    face inside the volume is traced, since it may belong to a large component.

    ``fix_borders`` is off, for blocks and for the whole volume alike: its border targets (and the root it takes
    among them) sit on the array's faces, so a block would aim branches at the faces of its read ROI (and at its
    own share of an object's contact with the volume's face), where the whole-volume trace has none. A neurite
    crossing a read-ROI face is traced to that face anyway (its farthest point), and the halo keeps the crop
    away from where the trace ends. ``object_ids``: trace only these labels (the others become background,
    which leaves the traced ones' boundary distances as they were).
    """
    import kimimaro

    p = resolve(params)
    ids = None if object_ids is None else [int(i) for i in object_ids]
    if labels.size == 0 or ids == [] or not labels.any():
        return {}
    dust = int(p["dust_threshold"])
    volume_shape = labels.shape if volume_shape is None else volume_shape
    if any(o > 0 or o + n < v for o, n, v in zip(origin, labels.shape, volume_shape)):  # a face inside the volume
        labels, dust = clear_dust(labels, origin, volume_shape, dust, ids), 0
    labels_xyz = np.asarray(labels).T  # a view: Fortran-ordered (x, y, z), what kimimaro wants
    anisotropy = tuple(float(v) for v in voxel_size)[::-1]
    teasar = dict(p["teasar"])
    # somata are found once for the whole volume and cut out before tracing (find_somata, mask_somata): a block
    # holding part of a soma must not detect a smaller one of its own
    teasar["soma_detection_threshold"] = teasar["soma_acceptance_threshold"] = float("inf")
    skels = kimimaro.skeletonize(
        labels_xyz,
        teasar_params=teasar,
        object_ids=ids,
        anisotropy=anisotropy,
        dust_threshold=dust,
        fix_branching=bool(p["fix_branching"]),
        fix_borders=False,
        progress=False,
        parallel=int(parallel),
        in_place=False,  # kimimaro masks object_ids in place: never on the caller's array
    )
    out = {}
    aniso = np.asarray(anisotropy, dtype=np.float64)
    # in label order: with parallel > 1 kimimaro returns skeletons in completion order, and sums over them
    # (cable lengths, ERL) would differ in the last bits from run to run
    for label, s in sorted(skels.items()):
        if len(s.vertices) == 0:
            continue
        vox = np.rint(s.vertices.astype(np.float64) / aniso)[:, ::-1]  # voxel centres, (z, y, x)
        out[int(label)] = densify(vox, np.asarray(s.edges, np.int64), np.asarray(s.radius, np.float32))
    return out


def clear_dust(labels: np.ndarray, origin: Sequence[int], volume_shape: Sequence[int], threshold: int,
               object_ids: Iterable[int] | None = None) -> np.ndarray:
    """``labels`` with every 26-connected component of ``threshold`` voxels or fewer cleared (kimimaro's
    ``dust_threshold``), except components touching a face of the array that lies inside the volume: the array is
    a block's read ROI there, and the component may go on beyond it. ``object_ids``: only their components count
    (the others are not traced). Returns ``labels`` itself when nothing is cleared."""
    import cc3d
    import fastremap

    if threshold <= 0 or labels.size == 0:
        return labels
    traced = labels if object_ids is None else fastremap.mask_except(labels, list(object_ids), in_place=False)
    cc = cc3d.connected_components(traced, connectivity=26)
    ids, counts = fastremap.unique(cc, return_counts=True)
    small = ids[(counts <= threshold) & (ids != 0)]
    if not len(small):
        return labels
    cut = set()
    for axis in range(3):
        if origin[axis] > 0:
            cut.update(fastremap.unique(np.take(cc, 0, axis)).tolist())
        if origin[axis] + labels.shape[axis] < volume_shape[axis]:
            cut.update(fastremap.unique(np.take(cc, -1, axis)).tolist())
    dust = [int(i) for i in small if int(i) not in cut]
    if not dust:
        return labels
    out = labels.copy()
    out[fastremap.mask_except(cc, dust) != 0] = 0
    return out


def densify(vox: np.ndarray, edges: np.ndarray, radii: np.ndarray):
    """Split edges longer than one voxel step (kimimaro's soma star edges jump from the soma centre to the first
    vertex outside it) into steps of at most one voxel per axis, so that cropping at block faces is geometric."""
    if len(edges) == 0:
        return vox, edges, radii
    steps = np.abs(vox[edges[:, 0]] - vox[edges[:, 1]]).max(axis=1)
    long = np.flatnonzero(steps > 1.5)
    if len(long) == 0:
        return vox, edges, radii
    verts, rads, new_edges = [vox], [radii], [edges[np.setdiff1d(np.arange(len(edges)), long)]]
    n = len(vox)
    for k in long:
        a, b = edges[k]
        m = int(np.ceil(steps[k]))
        t = np.arange(1, m)[:, None] / m
        verts.append(vox[a] + t * (vox[b] - vox[a]))
        rads.append((radii[a] + t[:, 0] * (radii[b] - radii[a])).astype(np.float32))
        chain = np.concatenate([[a], np.arange(n, n + m - 1), [b]])
        new_edges.append(np.stack([chain[:-1], chain[1:]], axis=1))
        n += m - 1
    return np.concatenate(verts), np.concatenate(new_edges), np.concatenate(rads)


# --- per block ---------------------------------------------------------------------------------------------


def crop_to_roi(vox: np.ndarray, edges: np.ndarray, radii: np.ndarray, write: Roi, voxel_size, offset_nm) -> Skel:
    """Keep the vertices inside ``write`` (voxel coordinates (z, y, x), global); cut each edge that leaves it
    at the block face and keep the cut point as a face vertex."""
    lo = np.asarray(write.offset, np.float64)
    hi = np.asarray(write.end, np.float64)
    # The faces are the planes half a voxel outside the owned voxels (densified vertices can be fractional).
    inside = np.all((vox >= lo - 0.5) & (vox < hi - 0.5), axis=1)
    keep = np.flatnonzero(inside)
    remap = np.full(len(vox), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    verts = [vox[keep]]
    rads = [radii[keep]]
    fa, fp, fs = [np.full(len(keep), -1, np.int8)], [np.zeros(len(keep), np.int64)], [np.zeros(len(keep), np.int8)]
    new_edges = []
    both = inside[edges[:, 0]] & inside[edges[:, 1]]
    if both.any():
        new_edges.append(remap[edges[both]])
    cross = inside[edges[:, 0]] ^ inside[edges[:, 1]]
    n = len(keep)
    for a, b in edges[cross]:
        u, w = (a, b) if inside[a] else (b, a)
        pu, pw = vox[u], vox[w]
        best_t, best_axis, best_plane, best_side = 2.0, -1, 0, 0
        for axis in range(3):
            if pw[axis] >= hi[axis] - 0.5:  # leaves through the upper face: the plane between hi-1 and hi
                t = (hi[axis] - 0.5 - pu[axis]) / (pw[axis] - pu[axis])
                plane, side = int(hi[axis]), 1
            elif pw[axis] < lo[axis] - 0.5:
                t = (lo[axis] - 0.5 - pu[axis]) / (pw[axis] - pu[axis])
                plane, side = int(lo[axis]), -1
            else:
                continue
            if t < best_t:
                best_t, best_axis, best_plane, best_side = t, axis, plane, side
        assert best_axis >= 0, (pu, pw, write)
        point = pu + best_t * (pw - pu)
        point[best_axis] = best_plane - 0.5  # exactly on the plane, the same float in both blocks
        verts.append(point[None])
        rads.append(np.asarray([radii[u] + best_t * (radii[w] - radii[u])], np.float32))
        fa.append(np.asarray([best_axis], np.int8))
        fp.append(np.asarray([best_plane], np.int64))
        fs.append(np.asarray([best_side], np.int8))
        new_edges.append(np.asarray([[remap[u], n]]))
        n += 1
    return Skel(
        _to_nm(np.concatenate(verts), voxel_size, offset_nm),
        np.concatenate(new_edges) if new_edges else np.zeros((0, 2), np.int64),
        np.concatenate(rads),
        np.concatenate(fa), np.concatenate(fp), np.concatenate(fs),
    )


def skeletonize_block(
    labels_read: np.ndarray,
    block: Block,
    voxel_size: Sequence[float],
    params: dict | None = None,
    offset_nm: Sequence[float] = (0, 0, 0),
    parallel: int = 1,
    somata: dict | None = None,
    *,
    volume_shape: Sequence[int],
) -> tuple[dict[int, Skel], dict[int, int]]:
    """Skeletonize one block: kimimaro on its read ROI, pieces cropped to its write ROI. ``volume_shape``: the
    grid's (a piece cut off by a read-ROI face inside the volume is never dust: ``clear_dust``).

    Only labels present in the write ROI are traced (the others could only give pieces outside it). ``somata``
    (``find_somata`` of the whole volume, global voxels) are cleared from the read ROI first (``mask_somata``).

    Returns ``(pieces, voxel_counts)``: the cropped piece of every label with cable inside the write ROI, and
    the number of voxels of every label inside the write ROI (summed over blocks: exact segment sizes).
    """
    import fastremap

    owned = labels_read[block.write_in_read]
    ids, counts = fastremap.unique(owned, return_counts=True)
    voxel_counts = {int(i): int(c) for i, c in zip(ids, counts) if i != 0}
    pieces = {}
    read_offset = np.asarray(block.read.offset, np.float64)
    labels_read = mask_somata(labels_read, block.read.offset, voxel_size, somata or {}, params)
    traced = kimimaro_skeletons(labels_read, voxel_size, params, parallel, object_ids=sorted(voxel_counts),
                                origin=block.read.offset, volume_shape=volume_shape)
    for label, (vox, edges, radii) in traced.items():
        piece = crop_to_roi(vox + read_offset, edges, radii, block.write, voxel_size, offset_nm)
        if len(piece):
            pieces[label] = piece
    return pieces, voxel_counts


def save_pieces(path: str | Path, pieces: dict[int, Skel], voxel_counts: dict[int, int]) -> None:
    """One block's pieces in one .npz (written to a temp name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(sorted(pieces), np.uint64)
    nv = np.asarray([len(pieces[i]) for i in ids], np.int64)
    ne = np.asarray([len(pieces[i].edges) for i in ids], np.int64)
    cat = lambda attr, shape, dtype: (  # noqa: E731
        np.concatenate([getattr(pieces[i], attr) for i in ids]) if len(ids) else np.zeros(shape, dtype)
    )
    count_ids = np.asarray(sorted(voxel_counts), np.uint64)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(
        tmp, ids=ids, n_vertices=nv, n_edges=ne,
        vertices=cat("vertices", (0, 3), np.float64), edges=cat("edges", (0, 2), np.int64),
        radii=cat("radii", (0,), np.float32), face_axis=cat("face_axis", (0,), np.int8),
        face_plane=cat("face_plane", (0,), np.int64), face_side=cat("face_side", (0,), np.int8),
        count_ids=count_ids, counts=np.asarray([voxel_counts[int(i)] for i in count_ids], np.int64),
    )
    tmp.replace(path)


def load_pieces(path: str | Path) -> tuple[dict[int, Skel], dict[int, int]]:
    """Inverse of ``save_pieces``."""
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    pieces = {}
    v0 = e0 = 0
    for label, nv, ne in zip(d["ids"], d["n_vertices"], d["n_edges"]):
        sl, el = slice(v0, v0 + nv), slice(e0, e0 + ne)
        pieces[int(label)] = Skel(d["vertices"][sl], d["edges"][el], d["radii"][sl],
                                  d["face_axis"][sl], d["face_plane"][sl], d["face_side"][sl])
        v0, e0 = v0 + nv, e0 + ne
    counts = {int(i): int(c) for i, c in zip(d["count_ids"], d["counts"])}
    return pieces, counts
