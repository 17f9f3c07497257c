"""Skeleton graphs: ``Skel`` (vertices in nm, edges, radii), components, spanning trees, tick removal,
smoothing and rooted output order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Skel:
    """A skeleton (or a piece of one): positions in nm (z, y, x), edges as vertex index pairs, radii in nm.

    ``face_axis``/``face_plane``/``face_side`` describe face vertices made by cropping to a write ROI: the axis
    (0 z, 1 y, 2 x) of the block face, its plane (the voxel index of the first voxel on the far side), and the
    side the piece lies on (+1 below the plane, -1 above); -1/0/0 for ordinary vertices.
    """

    vertices: np.ndarray
    edges: np.ndarray
    radii: np.ndarray
    face_axis: np.ndarray = field(default=None)  # type: ignore[assignment]
    face_plane: np.ndarray = field(default=None)  # type: ignore[assignment]
    face_side: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        self.radii = np.asarray(self.radii, dtype=np.float32).reshape(-1)
        n = len(self.vertices)
        if self.face_axis is None:
            self.face_axis = np.full(n, -1, np.int8)
        if self.face_plane is None:
            self.face_plane = np.zeros(n, np.int64)
        if self.face_side is None:
            self.face_side = np.zeros(n, np.int8)

    def __len__(self) -> int:
        return len(self.vertices)

    def cable_length(self) -> float:
        """Total edge length in nm."""
        if len(self.edges) == 0:
            return 0.0
        d = self.vertices[self.edges[:, 0]] - self.vertices[self.edges[:, 1]]
        return float(np.sqrt((d * d).sum(axis=1)).sum())

    def n_components(self) -> int:
        """Number of connected components (isolated vertices count)."""
        return int(_components(len(self), self.edges)[0])

    def is_tree(self) -> bool:
        """One connected component without cycles."""
        return len(self) > 0 and self.n_components() == 1 and len(_unique_edges(self.edges)) == len(self) - 1

    def degrees(self) -> np.ndarray:
        return np.bincount(self.edges.ravel(), minlength=len(self)) if len(self) else np.zeros(0, np.int64)


def _to_nm(vox: np.ndarray, voxel_size, offset_nm) -> np.ndarray:
    return vox * np.asarray(voxel_size, np.float64) + np.asarray(offset_nm, np.float64)


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    if len(edges) == 0:
        return edges.reshape(0, 2)
    e = np.sort(edges, axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0)


def _components(n: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return 0, np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)


def _spanning_tree(vertices: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Minimum spanning forest over the skeleton's own edges (removes cycles, keeps connectivity)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    edges = _unique_edges(edges)
    n = len(vertices)
    if len(edges) <= max(n - 1, 0):
        n_comp, _ = _components(n, edges)
        if len(edges) == n - n_comp:  # already a forest
            return edges, 0
    length = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1) + 1e-6  # 0 means "no edge"
    mst = minimum_spanning_tree(coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n))).tocoo()
    kept = np.stack([mst.row, mst.col], axis=1).astype(np.int64)
    return _unique_edges(kept), len(edges) - len(kept)


def _superedges(skel: Skel) -> tuple[list[list[int]], np.ndarray]:
    """The unbranched paths of a forest between its critical vertices (degree != 2): each as the vertex list
    from one critical vertex to the other (both included). Returns ``(paths, degree)``."""
    import scipy.sparse as sp

    n = len(skel)
    deg = skel.degrees()
    e = skel.edges
    adj = sp.coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                        shape=(n, n)).tocsr()
    indptr, indices = adj.indptr, adj.indices
    paths = []
    done = set()  # (last interior or start, end) steps already walked from the other side
    for c in np.flatnonzero((deg != 2) & (deg > 0)):
        c = int(c)
        for u in indices[indptr[c]:indptr[c + 1]]:
            u = int(u)
            if (c, u) in done:
                continue
            path, prev, cur = [c, u], c, u
            while deg[cur] == 2:
                a, b = indices[indptr[cur]:indptr[cur + 1]]
                prev, cur = cur, int(b if a == prev else a)
                path.append(cur)
            done.add((cur, prev))
            paths.append(path)
    return paths, deg


def remove_ticks(skel: Skel, threshold_nm: float) -> Skel:
    """Remove terminal branches (tip to branch point) shorter than ``threshold_nm``, shortest first, re-evaluating
    after each removal (a branch point left with two branches joins them into one path), as kimimaro's
    ``post.remove_ticks``. Unlike kimimaro 5.8's version, a path between two branch points is never removed (that
    one treats the path made by joining two branches as a tick, which can cut a skeleton in two), so a tree
    stays one tree. Expects a forest (``finalize`` makes one); vertex order and positions are kept."""
    import heapq

    if len(skel) == 0 or len(skel.edges) == 0 or threshold_nm <= 0:
        return skel
    paths, deg = _superedges(skel)
    seg_len = np.linalg.norm(skel.vertices[skel.edges[:, 0]] - skel.vertices[skel.edges[:, 1]], axis=1)
    lookup = {}
    for (a, b), ln in zip(skel.edges.tolist(), seg_len.tolist()):
        lookup[(a, b)] = lookup[(b, a)] = ln
    length = {}
    ends = {}
    at = {}  # critical vertex -> ids of the superedges ending there
    for k, path in enumerate(paths):
        length[k] = sum(lookup[(path[i], path[i + 1])] for i in range(len(path) - 1))
        ends[k] = path
        for v in (path[0], path[-1]):
            at.setdefault(v, set()).add(k)
    degree = {v: len(s) for v, s in at.items()}
    heap = []

    def push(k):
        a, b = ends[k][0], ends[k][-1]
        if (degree[a] == 1 and degree[b] >= 3) or (degree[b] == 1 and degree[a] >= 3):
            heapq.heappush(heap, (length[k], k))

    for k in ends:
        push(k)
    removed = np.zeros(len(skel), bool)
    next_id = len(paths)
    while heap:
        ln, k = heapq.heappop(heap)
        if k not in ends:
            continue  # fused away since it was pushed
        if ln >= threshold_nm:
            break
        path = ends.pop(k)
        tip, branch = (path[0], path[-1]) if degree[path[0]] == 1 else (path[-1], path[0])
        if path[0] != tip:
            path = path[::-1]
        removed[path[:-1]] = True  # the tip and the interior; the branch point stays
        at[branch].discard(k)
        degree[branch] -= 1
        del length[k]
        if degree[branch] == 2:  # two branches left: one path through the former branch point
            k1, k2 = at.pop(branch)
            p1, p2 = ends.pop(k1), ends.pop(k2)
            p1 = p1 if p1[-1] == branch else p1[::-1]
            p2 = p2 if p2[0] == branch else p2[::-1]
            fused = p1 + p2[1:]
            ends[next_id] = fused
            length[next_id] = length.pop(k1) + length.pop(k2)
            for v, old in ((fused[0], (k1, k2)), (fused[-1], (k1, k2))):
                at[v].difference_update(old)
                at[v].add(next_id)
            degree.pop(branch)
            push(next_id)
            next_id += 1
    if not removed.any():
        return skel
    keep = np.flatnonzero(~removed)
    index = np.full(len(skel), -1, np.int64)
    index[keep] = np.arange(len(keep))
    e = skel.edges[~removed[skel.edges[:, 0]] & ~removed[skel.edges[:, 1]]]
    return Skel(skel.vertices[keep], index[e], skel.radii[keep])


def smooth(skel: Skel, iterations: int, max_edge_nm: float) -> Skel:
    """Laplacian smoothing of unbranched paths: ``iterations`` times, every vertex of degree 2 whose two edges are
    both at most ``max_edge_nm`` long moves halfway to the mean of its neighbours; tips, branch points and the
    ends of long (soma star) edges stay put. Takes out the staircase of voxel paths (a thin neurite lying across
    sections steps between them at places that depend on the path search), which otherwise adds cable that
    differs from one tracing to the next."""
    if iterations <= 0 or len(skel.edges) == 0:
        return skel
    import scipy.sparse as sp

    n = len(skel)
    e = skel.edges
    long = np.linalg.norm(skel.vertices[e[:, 0]] - skel.vertices[e[:, 1]], axis=1) > max_edge_nm
    movable = skel.degrees() == 2
    movable[e[long].ravel()] = False
    if not movable.any():
        return skel
    adj = sp.coo_matrix((np.full(2 * len(e), 0.5), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                        shape=(n, n)).tocsr()
    adj = adj[movable]  # rows of the movable vertices: the mean of their two neighbours
    v = skel.vertices.copy()
    for _ in range(int(iterations)):
        v[movable] = 0.5 * v[movable] + 0.5 * (adj @ v)
    return Skel(v, e, skel.radii)


# --- trees -------------------------------------------------------------------------------------------------


def to_tree(skel: Skel, root: int | None = None) -> tuple[Skel, np.ndarray]:
    """Order a forest for output: each component rooted (``root`` for its component, else its widest vertex;
    the largest component first), parents before children. Returns ``(reordered skel, parent)``, parent -1 at
    roots."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    n = len(skel)
    if n == 0:
        return skel, np.zeros(0, np.int64)
    n_comp, comp = _components(n, skel.edges)
    sizes = np.bincount(comp, minlength=n_comp)
    graph = sp.coo_matrix((np.ones(len(skel.edges)), (skel.edges[:, 0], skel.edges[:, 1])), shape=(n, n)).tocsr()
    graph = graph + graph.T
    order_all, parent_all = [], np.full(n, -1, np.int64)
    for c in sorted(range(n_comp), key=lambda c: (-sizes[c], c)):
        members = np.flatnonzero(comp == c)
        r = root if root is not None and comp[root] == c else int(members[np.argmax(skel.radii[members])])
        order, pred = breadth_first_order(graph, r, directed=False, return_predecessors=True)
        order_all.append(order)
        parent_all[order[1:]] = pred[order[1:]]
    order = np.concatenate(order_all)
    new_index = np.empty(n, np.int64)
    new_index[order] = np.arange(n)
    parent = np.where(parent_all[order] >= 0, new_index[np.maximum(parent_all[order], 0)], -1)
    child = np.flatnonzero(parent >= 0)
    out = Skel(skel.vertices[order], np.stack([child, parent[child]], axis=1), skel.radii[order])
    return out, parent
