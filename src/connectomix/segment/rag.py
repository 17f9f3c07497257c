"""Region adjacency graph (RAG): fragment contacts with their affinity statistics, per block and merged.

A block owns the affinity voxels of its write ROI. Each nearest-neighbour affinity at voxel v (offset -1 along
axis d) links v to v - e_d, which may lie in the lower neighbour block: so every voxel pair of the volume is seen by
exactly one block, face pairs included, and merging block tables double-counts nothing.

Edge statistics are exact for uint8 affinities: contact count, sum of values (0..255) and a sparse 256-bin
histogram (for quantiles).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from connectomix.segment.fragments import nn_channels

BINS = 256


@dataclass
class Rag:
    """Edges ``(u, v)`` with ``u < v`` (fragment ids), ``count`` contacts, ``total`` sum of uint8 affinities, and a
    sparse histogram: rows ``hist_edge`` (index into the edges), ``hist_bin`` (0..255), ``hist_count``.
    ``same_u``/``same_v`` list fragment pairs that are one fragment cut by a block face (joined before scoring);
    ``count_z`` the contacts between sections per edge (empty for a table written without it)."""

    u: np.ndarray
    v: np.ndarray
    count: np.ndarray
    total: np.ndarray
    hist_edge: np.ndarray
    hist_bin: np.ndarray
    hist_count: np.ndarray
    same_u: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    same_v: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    count_z: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def __len__(self) -> int:
        return len(self.u)

    @property
    def mean(self) -> np.ndarray:
        """Mean affinity per edge in [0, 1]."""
        return self.total / (255.0 * np.maximum(self.count, 1))

    def quantile(self, q: float) -> np.ndarray:
        """The ``q``-th percentile (0..100) of affinities per edge in [0, 1] (lower value at ties, like waterz)."""
        return _hist_quantile(self.hist_edge, self.hist_bin, self.hist_count, self.count, len(self), q) / 255.0

    def to_npz(self, path) -> None:
        np.savez(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def from_npz(cls, path) -> "Rag":
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.__dataclass_fields__ if k in f})

    def has_count_z(self) -> bool:
        """Whether the table counts its contacts between sections per edge (``count_z``)."""
        return len(self.count_z) == len(self)

    @classmethod
    def empty(cls) -> "Rag":
        z = np.zeros(0, np.uint64)
        return cls(z, z, z, z, np.zeros(0, np.int64), np.zeros(0, np.uint8), z)


def _no_histograms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty ``hist_edge``, ``hist_bin``, ``hist_count`` columns: a table that leaves the histograms out."""
    empty = Rag.empty()
    return empty.hist_edge, empty.hist_bin, empty.hist_count


def _hist_quantile(edge, bins, counts, totals, n_edges, q) -> np.ndarray:
    order = np.lexsort((bins, edge))
    edge, bins, counts = edge[order], bins[order], counts[order]
    cum = np.cumsum(counts)
    start = np.concatenate([[0], cum[:-1]])
    first = np.searchsorted(edge, np.arange(n_edges))
    base = start[np.minimum(first, len(start) - 1)] if len(start) else np.zeros(n_edges)
    # rank of the quantile inside each edge's values (1-based); the first bin whose cumulative count reaches it
    rank = np.maximum(1, np.ceil(q / 100.0 * totals.astype(np.float64))).astype(np.int64)
    want = base + rank
    idx = np.searchsorted(cum, want, side="left")
    out = np.zeros(n_edges, np.float64)
    ok = idx < len(bins)
    out[ok] = bins[idx[ok]]
    return out


def _sorted_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for integer ids, through a hash pass (fastremap) and a sort of the
    distinct ids only: about 10x faster on contact lists, where few ids repeat many times."""
    import fastremap

    dense, mapping = fastremap.renumber(np.ascontiguousarray(values), preserve_zero=False, in_place=False)
    ids = np.fromiter(mapping.keys(), values.dtype, len(mapping))
    new = np.fromiter(mapping.values(), np.int64, len(mapping))
    order = np.argsort(ids)
    rank = np.empty(len(ids) + 1, np.int64)
    rank[new[order]] = np.arange(len(ids))
    return ids[order], rank[dense]


def _pairs_to_rag(u: np.ndarray, v: np.ndarray, aff: np.ndarray, histograms: bool = True,
                  is_z: np.ndarray | None = None) -> Rag:
    """Edge table from contact pairs (any order, zeros and self pairs already removed) and their uint8 values.
    One sort of (edge, value) keys gives the histogram; counts and sums follow from it. Without ``histograms``
    the table leaves the histogram rows out. ``is_z`` flags the contacts between sections (``Rag.count_z``)."""
    if len(u) == 0:
        return Rag.empty()
    lo = np.minimum(u, v)
    hi = np.maximum(u, v)
    nodes, inverse = _sorted_ids(np.concatenate([lo, hi]))
    n = len(nodes)
    pair_key = inverse[: len(lo)].astype(np.int64) * n + inverse[len(lo):]
    hkey, hcount = np.unique(pair_key * BINS + aff.astype(np.int64), return_counts=True)
    key, bins = hkey // BINS, hkey % BINS
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    keys = key[first]
    if histograms:
        rows = np.repeat(np.arange(len(first), dtype=np.int64), np.diff(np.r_[first, len(key)]))
        hist = (rows, bins.astype(np.uint8), hcount.astype(np.uint64))
    else:
        hist = _no_histograms()
    count = np.add.reduceat(hcount, first).astype(np.uint64)
    total = np.add.reduceat(hcount * bins, first).astype(np.uint64)
    count_z = np.zeros(0, np.uint64)
    if is_z is not None:
        zkeys, zcount = np.unique(pair_key[is_z], return_counts=True)
        count_z = np.zeros(len(keys), np.uint64)
        count_z[np.searchsorted(keys, zkeys)] = zcount
    return Rag(nodes[keys // n].astype(np.uint64), nodes[keys % n].astype(np.uint64), count, total, *hist,
               count_z=count_z)


def block_rag(fragments: np.ndarray, affs: np.ndarray, pad, histograms: bool = True) -> Rag:
    """Edges owned by one block.

    ``fragments`` covers the write ROI grown by ``pad[d]`` (0 or 1) voxels on the low side of each axis (the
    lower neighbours' already written fragments); ``affs`` holds the three nearest-neighbour channels (z, y, x
    order) as uint8 over the write ROI only. ``histograms``: keep the per-edge affinity histograms (only a
    quantile agglomeration reads them; they are most of the table).
    """
    if affs.dtype != np.uint8:
        raise ValueError(f"affinities must be uint8 (value/255), got {affs.dtype}")
    pad = [int(p) for p in pad]
    wshape = affs.shape[1:]
    us, vs, values, along_z = [], [], [], []
    for d in range(3):
        own = [slice(p, p + s) for p, s in zip(pad, wshape)]
        low = list(own)
        low[d] = slice(pad[d] - 1, pad[d] - 1 + wshape[d])
        a_sl = [slice(None)] * 3
        if pad[d] == 0:  # the write ROI starts at the volume's edge: its first plane has no lower partner
            own[d] = slice(1, wshape[d])
            low[d] = slice(0, wshape[d] - 1)
            a_sl[d] = slice(1, None)
        a = fragments[tuple(own)].ravel()
        b = fragments[tuple(low)].ravel()
        val = affs[d][tuple(a_sl)].ravel()
        keep = (a != b) & (a != 0) & (b != 0)
        us.append(a[keep])
        vs.append(b[keep])
        values.append(val[keep])
        along_z.append(np.full(int(keep.sum()), d == 0))
    return _pairs_to_rag(np.concatenate(us), np.concatenate(vs), np.concatenate(values), histograms,
                         np.concatenate(along_z))


def merge_rags(rags: list[Rag], histograms: bool = True) -> Rag:
    """One graph from block tables: edges with the same (u, v) are summed (counts, sums, histograms). Without
    ``histograms`` the result has none (a mean-affinity agglomeration needs only counts and sums; pooling the
    histograms is most of the work)."""
    same_u = np.concatenate([np.zeros(0, np.uint64)] + [r.same_u for r in rags]).astype(np.uint64)
    same_v = np.concatenate([np.zeros(0, np.uint64)] + [r.same_v for r in rags]).astype(np.uint64)
    rags = [r for r in rags if len(r)]
    if not rags:
        out = Rag.empty()
        out.same_u, out.same_v = same_u, same_v
        return out
    u = np.concatenate([r.u for r in rags])
    v = np.concatenate([r.v for r in rags])
    nodes, inverse = _sorted_ids(np.concatenate([u, v]))
    n = len(nodes)
    key = inverse[: len(u)].astype(np.int64) * n + inverse[len(u):]
    keys, edge = np.unique(key, return_inverse=True)
    count = np.bincount(edge, weights=np.concatenate([r.count for r in rags]).astype(np.float64))
    total = np.bincount(edge, weights=np.concatenate([r.total for r in rags]).astype(np.float64))
    count_z = np.zeros(0, np.uint64)
    if all(r.has_count_z() for r in rags):
        count_z = np.bincount(edge, weights=np.concatenate([r.count_z for r in rags]).astype(np.float64),
                              minlength=len(keys)).astype(np.uint64)
    if not histograms:
        return Rag(nodes[keys // n].astype(np.uint64), nodes[keys % n].astype(np.uint64), count.astype(np.uint64),
                   total.astype(np.uint64), *_no_histograms(), same_u, same_v, count_z)
    # histogram rows: re-point each block's local edge index to the merged edge index
    starts = np.cumsum([0] + [len(r) for r in rags[:-1]])
    hedge = np.concatenate([edge[s + r.hist_edge] for s, r in zip(starts, rags)]).astype(np.int64)
    hbin = np.concatenate([r.hist_bin for r in rags]).astype(np.int64)
    hkey, hinv = np.unique(hedge * BINS + hbin, return_inverse=True)
    hcount = np.bincount(hinv, weights=np.concatenate([r.hist_count for r in rags]).astype(np.float64))
    return Rag(
        u=nodes[keys // n].astype(np.uint64),
        v=nodes[keys % n].astype(np.uint64),
        count=count.astype(np.uint64),
        total=total.astype(np.uint64),
        hist_edge=(hkey // BINS).astype(np.int64),
        hist_bin=(hkey % BINS).astype(np.uint8),
        hist_count=hcount.astype(np.uint64),
        same_u=same_u,
        same_v=same_v,
        count_z=count_z,
    )


def volume_rag(fragments: np.ndarray, affs: np.ndarray, offsets) -> Rag:
    """The whole-volume RAG in one go (tests, benchmarks): the same as merging every block's table."""
    ch = nn_channels(offsets)
    return block_rag(fragments, np.ascontiguousarray(affs[ch]), (0, 0, 0))


def majority_pairs(own: np.ndarray, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (own id, view id) where at least half of an own fragment's voxels on a plane carry one view id.

    ``own`` is a block's fragment plane at a face; ``view`` is the neighbour block's labelling of the same voxels
    (computed with context, see ``fragments.block_fragments``). Such pairs are one fragment cut by the face.
    """
    own = own.ravel()
    view = view.ravel()
    keep = own != 0
    own, view = own[keep], view[keep]
    if len(own) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    o_ids, o_inv, o_tot = np.unique(own, return_inverse=True, return_counts=True)
    v_ids, v_inv = np.unique(view, return_inverse=True)
    key = o_inv.astype(np.int64) * len(v_ids) + v_inv
    keys, counts = np.unique(key, return_counts=True)
    oi, vi = keys // len(v_ids), keys % len(v_ids)
    ok = (v_ids[vi] != 0) & (2 * counts >= o_tot[oi])
    return o_ids[oi[ok]].astype(np.uint64), v_ids[vi[ok]].astype(np.uint64)


def contract(rag: Rag, source: np.ndarray, target: np.ndarray, histograms: bool = True) -> Rag:
    """The RAG with fragment ids ``source`` (sorted) replaced by ``target``; contacts inside a node are dropped
    and parallel edges pooled (their histograms too; with ``histograms`` false they are left out, unless nothing
    is contracted and ``rag`` comes back as it is)."""
    if len(source) == 0 or len(rag) == 0:
        return rag

    def mapped(ids):
        idx = np.minimum(np.searchsorted(source, ids), len(source) - 1)
        hit = source[idx] == ids
        out = ids.copy()
        out[hit] = target[idx[hit]]
        return out

    u, v = mapped(rag.u), mapped(rag.v)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    keep = lo != hi
    if histograms:
        index = np.full(len(rag), -1, np.int64)
        index[keep] = np.arange(keep.sum())
        hkeep = keep[rag.hist_edge]
        hist = (index[rag.hist_edge[hkeep]], rag.hist_bin[hkeep], rag.hist_count[hkeep])
    else:  # merge_rags would drop them: do not gather them
        hist = _no_histograms()
    sub = Rag(lo[keep], hi[keep], rag.count[keep], rag.total[keep], *hist,
              count_z=rag.count_z[keep] if rag.has_count_z() else np.zeros(0, np.uint64))
    return merge_rags([sub], histograms)
