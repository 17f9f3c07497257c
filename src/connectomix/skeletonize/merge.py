"""The merge: one segment's block pieces fused at the block faces into one tree (``merge_pieces``), and the
post-processing shared with whole-volume skeletons (``finalize``)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.soma import attach_soma, collapse_soma
from connectomix.skeletonize.tree import Skel, _components, _spanning_tree, _unique_edges, remove_ticks, smooth


def _fuse_faces(skel: Skel, max_distance: float) -> tuple[np.ndarray, int]:
    """Pair face vertices across each plane (closest first, within ``max_distance``); a vertex->vertex map."""
    from scipy.spatial import cKDTree

    mapping = np.arange(len(skel))
    fused = 0
    is_face = np.flatnonzero(skel.face_axis >= 0)
    if len(is_face) == 0:
        return mapping, 0
    keys = np.stack([skel.face_axis[is_face].astype(np.int64), skel.face_plane[is_face]], axis=1)
    for key in np.unique(keys, axis=0):
        group = is_face[np.all(keys == key, axis=1)]
        below = group[skel.face_side[group] > 0]
        above = group[skel.face_side[group] < 0]
        if len(below) == 0 or len(above) == 0:
            continue
        tree = cKDTree(skel.vertices[above])
        pairs = tree.sparse_distance_matrix(cKDTree(skel.vertices[below]), max_distance, output_type="ndarray")
        if len(pairs) == 0:
            continue
        order = np.argsort(pairs["v"], kind="stable")
        used_a, used_b = set(), set()
        for k in order:
            i, j = int(pairs["i"][k]), int(pairs["j"][k])
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            mapping[below[j]] = above[i]
            fused += 1
    return mapping, fused


def _join_components(skel: Skel, max_distance: float) -> tuple[np.ndarray, int]:
    """Edges joining components by their nearest vertices (Kruskal over components, distance <= limit)."""
    from scipy.spatial import cKDTree

    n_comp, comp = _components(len(skel), skel.edges)
    if n_comp <= 1:
        return np.zeros((0, 2), np.int64), 0
    members = [np.flatnonzero(comp == c) for c in range(n_comp)]
    trees = [cKDTree(skel.vertices[m]) for m in members]
    candidates = []
    for i in range(n_comp):
        for j in range(i + 1, n_comp):
            d, idx = trees[i].query(skel.vertices[members[j]], k=1, distance_upper_bound=max_distance)
            k = int(np.argmin(d))
            if np.isfinite(d[k]):
                candidates.append((float(d[k]), i, j, int(members[i][idx[k]]), int(members[j][k])))
    parent = list(range(n_comp))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    new = []
    for _, i, j, a, b in sorted(candidates):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            new.append((a, b))
    return np.asarray(new, np.int64).reshape(-1, 2), len(new)


def concat(pieces: Iterable[Skel]) -> Skel:
    """All pieces in one Skel (edges re-indexed), nothing joined."""
    pieces = list(pieces)
    if not pieces:
        return Skel(np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0))
    offsets = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    return Skel(
        np.concatenate([p.vertices for p in pieces]),
        np.concatenate([p.edges + o for p, o in zip(pieces, offsets)]),
        np.concatenate([p.radii for p in pieces]),
        np.concatenate([p.face_axis for p in pieces]),
        np.concatenate([p.face_plane for p in pieces]),
        np.concatenate([p.face_side for p in pieces]),
    )


def merge_pieces(pieces: Iterable[Skel], params: dict | None = None, stats: dict | None = None,
                 soma: tuple | None = None) -> Skel:
    """Fuse one segment's block pieces into one skeleton: face vertices joined, duplicates removed, the soma
    attached (``soma``: ``soma_of``), close components joined within ``join_distance_nm``, cycles removed.
    ``stats`` (a dict) receives counts."""
    p = resolve(params)
    skel = concat(pieces)
    if len(skel) == 0:
        return skel if soma is None else finalize(attach_soma(skel, *soma), p, stats, is_soma=True)
    mapping, fused = _fuse_faces(skel, float(p["face_match_distance_nm"]))
    # Fused pairs share a vertex at their midpoint.
    keep = np.flatnonzero(mapping == np.arange(len(skel)))
    vertices = skel.vertices.copy()
    radii = skel.radii.copy()
    partners = np.flatnonzero(mapping != np.arange(len(skel)))
    if len(partners):
        tgt = mapping[partners]
        vertices[tgt] = 0.5 * (vertices[tgt] + vertices[partners])
        radii[tgt] = 0.5 * (radii[tgt] + radii[partners])
    index = np.full(len(skel), -1, np.int64)
    index[keep] = np.arange(len(keep))
    edges = _unique_edges(index[mapping[skel.edges]])
    # Exact duplicates (same position; e.g. both blocks kept the same voxel) become one vertex.
    verts, inverse = np.unique(np.round(vertices[keep], 6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    dup = len(keep) - len(verts)
    rad = np.zeros(len(verts), np.float32)
    np.maximum.at(rad, inverse, radii[keep])
    edges = _unique_edges(inverse[edges])
    skel = Skel(verts, edges, rad)
    if soma is not None:
        skel = attach_soma(skel, *soma)
    merged = finalize(skel, p, stats, is_soma=soma is not None)
    if stats is not None:
        stats.update(face_pairs_fused=fused, duplicates_removed=dup)
    return merged


def finalize(skel: Skel, params: dict | None = None, stats: dict | None = None, is_soma: bool | None = None) -> Skel:
    """Collapse the soma, join close components (``join_distance_nm``), break cycles (minimum spanning tree),
    remove ticks shorter than ``tick_threshold_nm`` (``remove_ticks``), smooth paths (``smooth``). Applied alike
    to merged and whole-volume skeletons. ``is_soma``: whether the segment has a soma (``soma_sphere``)."""
    p = resolve(params)
    skel, soma = collapse_soma(skel, p, is_soma)
    joins, n_joins = _join_components(skel, float(p["join_distance_nm"]))
    edges, n_cut = _spanning_tree(skel.vertices, np.concatenate([skel.edges, joins]))
    skel = Skel(skel.vertices, edges, skel.radii)
    n_before = len(skel)
    if float(p["tick_threshold_nm"]) > 0 and len(skel.edges):
        skel = remove_ticks(skel, float(p["tick_threshold_nm"]))
    skel = smooth(skel, int(p["smooth"]["iterations"]), float(p["smooth"]["max_edge_nm"]))
    if stats is not None:
        stats.update(components_joined=n_joins, cycle_edges_removed=n_cut, tick_vertices_removed=n_before - len(skel))
    return skel


def merge_all(by_label: dict[int, list[Skel]], counts: dict[int, int], params: dict | None = None,
              stats: dict | None = None, somata: dict | None = None) -> dict[int, Skel]:
    """Merge every segment's pieces; segments under ``min_segment_voxels`` voxels are left out. ``somata``:
    ``{label: soma_of(...)}`` (nm); a segment with a soma is kept even when nothing outside its sphere was traced."""
    p = resolve(params)
    somata = somata or {}
    out = {}
    totals = {"face_pairs_fused": 0, "duplicates_removed": 0, "components_joined": 0, "cycle_edges_removed": 0,
              "tick_vertices_removed": 0, "segments_too_small": 0}
    for label in sorted(set(by_label) | (set(somata) & set(counts))):
        if counts.get(label, 0) < int(p["min_segment_voxels"]):
            totals["segments_too_small"] += 1
            continue
        s = {}
        merged = merge_pieces(by_label.get(label, []), p, s, somata.get(label))
        for k, v in s.items():
            totals[k] += v
        if len(merged):
            out[label] = merged
    if stats is not None:
        stats.update(totals)
    return out
