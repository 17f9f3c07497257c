"""Meshes of a label volume with zmesh: marching cubes per block, merged per segment without seams, simplified.

Seams: a block meshes its write ROI plus one voxel on its high sides (the first voxels of the next blocks), so the
marching cubes between two neighbouring blocks' voxels belong to exactly one block; on the dataset's own faces the
labels are padded with background, which closes the meshes there. Marching cubes on labels puts every vertex at
a voxel centre or half-way between two voxel centres, so the pieces of a segment share their vertices on block
faces exactly: :func:`weld` joins them on a half-voxel integer grid, and the welded mesh is the whole-volume mesh
(closed, no duplicate faces). Simplification (quadric edge collapse) runs on the welded mesh, so it sees no block
faces either.

Vertices are in nm (x, y, z, Neuroglancer's order), voxel centred: voxel (z, y, x) has its centre at
``offset_nm + (index + 0.5) * voxel_size``, where the precomputed segmentation draws it.
"""

from __future__ import annotations

import numpy as np

PIECES_KEYS = ("labels", "voxels", "nvert", "nface", "vertices", "faces")


def _mesher(voxel_size):
    import zmesh

    vz, vy, vx = (float(v) for v in voxel_size)
    return zmesh.Mesher((vx, vy, vz))


def mesh_labels(labels: np.ndarray, voxel_size, origin_vox, shape, pad_low=None, pad_high=None) -> dict:
    """Marching cubes of every non-zero label of ``labels`` (z, y, x), whose first voxel is ``origin_vox`` of a
    volume of ``shape``: the sides on the volume's faces are padded with background (closed there; ``pad_low``,
    ``pad_high``: which sides, default those on the volume's faces). Returns {label: (vertices nm (x, y, z)
    relative to the volume origin, voxel centred, float64; faces uint32)}, unsimplified."""
    origin = np.asarray(origin_vox, int)
    end = origin + np.asarray(labels.shape)
    low = origin == 0 if pad_low is None else np.asarray(pad_low, bool)
    high = end >= np.asarray(shape) if pad_high is None else np.asarray(pad_high, bool)
    padded = np.pad(labels, [(int(lo), int(hi)) for lo, hi in zip(low, high)])
    mesher = _mesher(voxel_size)
    mesher.mesh(np.asfortranarray(padded.T))
    shift = ((origin - low)[::-1] + 0.5) * np.asarray(voxel_size, float)[::-1]
    out = {}
    for label in mesher.ids():
        if label == 0:
            continue
        m = mesher.get(label, reduction_factor=0)
        out[int(label)] = (m.vertices.astype(np.float64) + shift, m.faces.astype(np.uint32))
    mesher.clear()
    return out


def mesh_block(labels: np.ndarray, block, voxel_size, shape) -> tuple[dict, dict]:
    """Mesh one block: ``labels`` is its read ROI (write ROI + a halo of at least one voxel); the write ROI plus one
    voxel on its high sides is meshed. Returns ({label: (vertices, faces)}, {label: voxels in the write ROI})."""
    inner = labels[block.write_in_read]
    w0 = np.asarray(block.write.offset) - np.asarray(block.read.offset)
    w1 = w0 + np.asarray(block.write.shape)
    ext = labels[tuple(slice(a, min(b + 1, n)) for a, b, n in zip(w0, w1, labels.shape))]
    ids, counts = np.unique(inner, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i != 0}
    return mesh_labels(ext, voxel_size, block.write.offset, shape), voxels


def pack(meshes: dict, voxels: dict) -> dict:
    """The arrays of one block's pieces (``save`` them with np.savez)."""
    labels = np.array(sorted(set(meshes) | set(voxels)), np.uint64)
    parts = [meshes.get(int(k), (np.zeros((0, 3)), np.zeros((0, 3), np.uint32))) for k in labels]
    return {
        "labels": labels,
        "voxels": np.array([voxels.get(int(k), 0) for k in labels], np.int64),
        "nvert": np.array([len(v) for v, _ in parts], np.int64),
        "nface": np.array([len(f) for _, f in parts], np.int64),
        "vertices": np.concatenate([v for v, _ in parts]).astype(np.float64) if parts else np.zeros((0, 3)),
        "faces": np.concatenate([f for _, f in parts]).astype(np.uint32) if parts else np.zeros((0, 3), np.uint32),
    }


def unpack(arrays) -> dict:
    """{label: (voxels, vertices, faces)} of a block's packed pieces."""
    vs, fs = np.cumsum(np.r_[0, arrays["nvert"]]), np.cumsum(np.r_[0, arrays["nface"]])
    return {int(k): (int(n), arrays["vertices"][vs[i]:vs[i + 1]], arrays["faces"][fs[i]:fs[i + 1]])
            for i, (k, n) in enumerate(zip(arrays["labels"], arrays["voxels"]))}


def weld(pieces, voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """One mesh of a segment's pieces: vertices joined on the half-voxel grid, degenerate and duplicate faces
    dropped. Returns (vertices float32 (x, y, z) nm, faces uint32)."""
    pieces = [(v, f) for v, f in pieces if len(f)]
    if not pieces:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    starts = np.cumsum([0] + [len(v) for v, _ in pieces])
    vertices = np.concatenate([v for v, _ in pieces])
    faces = np.concatenate([f.astype(np.int64) + s for (_, f), s in zip(pieces, starts)])
    half = np.asarray(voxel_size, float)[::-1] / 2
    grid = np.rint(vertices / half).astype(np.int64)
    low = grid.min(axis=0)
    _, first, index = np.unique(_pack_rows(grid - low), return_index=True, return_inverse=True)
    faces = index.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    _, once = np.unique(_pack_rows(np.sort(faces, axis=1)), return_index=True)
    faces = faces[np.sort(once)]
    used, faces = np.unique(faces, return_inverse=True)
    return (grid[first[used]] * half).astype(np.float32), faces.reshape(-1, 3).astype(np.uint32)


def _pack_rows(rows: np.ndarray) -> np.ndarray:
    """One sortable key per row of three non-negative integers (21 bits each when they fit, else a void view)."""
    if rows.size == 0 or rows.max() < 1 << 21:
        return (rows[:, 0] << 42) | (rows[:, 1] << 21) | rows[:, 2]
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * 3))).ravel()


def simplify(vertices, faces, voxel_size, reduction_factor: int, max_error_nm: float):
    """Quadric edge collapse (zmesh) of one mesh: at most ``max_error_nm`` displacement, towards ``reduction_factor``
    times fewer faces (0: none). Returns (vertices float32, faces uint32)."""
    if reduction_factor <= 1 or len(faces) == 0:
        return vertices, faces
    import zmesh

    m = _mesher(voxel_size).simplify(zmesh.Mesh(vertices, faces, None), reduction_factor=int(reduction_factor),
                                     max_error=float(max_error_nm))
    return m.vertices.astype(np.float32), m.faces.astype(np.uint32)


def open_edges(faces: np.ndarray) -> int:
    """Edges not shared by exactly two faces (0 for a closed manifold mesh)."""
    if len(faces) == 0:
        return 0
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts != 2).sum())


def area(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Surface area of a triangle mesh (units of the vertices, squared)."""
    if len(faces) == 0:
        return 0.0
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)


def mesh_whole(labels: np.ndarray, voxel_size) -> dict:
    """Every segment's mesh from the whole volume at once (the reference of the blockwise meshes): {label:
    (vertices, faces)}, unsimplified, welded like the blockwise ones."""
    return {k: weld([m], voxel_size) for k, m in mesh_labels(labels, voxel_size, (0, 0, 0), labels.shape).items()}
