"""Global agglomeration of the merged RAG and the fragment -> segment lookup table.

* ``mean`` / ``quantile``: hierarchical agglomeration (as waterz's ``OneMinus<MeanAffinity>`` /
  ``OneMinus<HistogramQuantileAffinity>``): repeatedly merge the two regions whose contact has the lowest score
  ``1 - affinity statistic``, re-scoring merged contacts from their pooled statistics, until the lowest score
  reaches the threshold. Scores only grow, so the merge history prefix up to t is the segmentation at threshold t.
* ``mutex``: mutex watershed (mwatershed) on the RAG, edge weight = mean affinity - ``mutex_bias``.
* ``learned``: ``mean`` on P(same object) from a trained edge classifier (:mod:`connectomix.segment.edges`).

A segment's id is the lowest fragment id it contains, so it depends only on the segment's content.
"""

from __future__ import annotations

import heapq

import numpy as np

from connectomix.segment.edges import learned_graph
from connectomix.segment.rag import BINS, Rag


class UnionFind:
    """Union-find over node indices 0..n-1 with path halving."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra

    def roots(self) -> np.ndarray:
        """Root of every node (vectorised pointer jumping)."""
        parent = self.parent.copy()
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def hierarchical(rag: Rag, threshold: float, score: str = "mean", quantile: float = 50) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerate ``rag`` until the lowest edge score reaches ``threshold``.

    Returns ``(nodes, merges)``: the sorted fragment ids and the merge history as a structured array with fields
    ``a``, ``b`` (fragment ids of the two regions' representatives) and ``score``, in merge order (non-decreasing
    score).
    """
    nodes = np.unique(np.concatenate([rag.u, rag.v]))
    merges = np.zeros(0, dtype=[("a", np.uint64), ("b", np.uint64), ("score", np.float64)])
    if len(rag) == 0:
        return nodes, merges
    ua = np.searchsorted(nodes, rag.u)
    va = np.searchsorted(nodes, rag.v)
    count = rag.count.astype(np.float64)
    total = rag.total.astype(np.float64)
    hist = None
    if score == "quantile":
        if not len(rag.hist_edge):
            raise ValueError("quantile agglomeration needs the RAG's affinity histograms, and this one has none "
                             "(segment rag writes them only for agglomerate.method 'quantile': rerun it)")
        hist = np.zeros((len(rag), BINS), np.float64)
        np.add.at(hist, (rag.hist_edge, rag.hist_bin.astype(np.int64)), rag.hist_count.astype(np.float64))
    elif score != "mean":
        raise ValueError(f"hierarchical score must be 'mean' or 'quantile', got {score!r}")

    def edge_score(e: int) -> float:
        if hist is None:
            return 1.0 - total[e] / (255.0 * count[e])
        cum = np.cumsum(hist[e])
        rank = max(1.0, np.ceil(quantile / 100.0 * cum[-1]))
        return 1.0 - float(np.searchsorted(cum, rank)) / 255.0

    adjacency: list[dict] = [dict() for _ in range(len(nodes))]
    for e, (a, b) in enumerate(zip(ua.tolist(), va.tolist())):
        adjacency[a][b] = e
        adjacency[b][a] = e
    end_a = ua.copy()
    end_b = va.copy()
    version = np.zeros(len(rag), np.int64)
    if hist is None:
        scores = 1.0 - total / (255.0 * count)
    else:
        scores = 1.0 - rag.quantile(quantile)
    heap = [(float(s), e, 0) for e, s in enumerate(scores)]
    heapq.heapify(heap)
    alive = np.ones(len(rag), bool)
    out_a, out_b, out_s = [], [], []
    while heap:
        s, e, ver = heap[0]
        if s >= threshold:
            break
        heapq.heappop(heap)
        if not alive[e] or ver != version[e]:
            continue
        a, b = int(end_a[e]), int(end_b[e])
        # keep the node with more neighbours; move the other's contacts onto it
        if len(adjacency[a]) < len(adjacency[b]):
            a, b = b, a
        out_a.append(nodes[a])
        out_b.append(nodes[b])
        out_s.append(s)
        alive[e] = False
        del adjacency[a][b]
        del adjacency[b][a]
        for n, eb in adjacency[b].items():
            del adjacency[n][b]
            ea = adjacency[a].get(n)
            if ea is None:  # re-point the contact (b, n) to (a, n); its score is unchanged
                adjacency[a][n] = eb
                adjacency[n][a] = eb
                if end_a[eb] == b:
                    end_a[eb] = a
                else:
                    end_b[eb] = a
            else:  # pool the two contacts' statistics into (a, n)
                count[ea] += count[eb]
                total[ea] += total[eb]
                if hist is not None:
                    hist[ea] += hist[eb]
                alive[eb] = False
                version[ea] += 1
                heapq.heappush(heap, (edge_score(ea), ea, int(version[ea])))
        adjacency[b] = {}
    if out_a:
        merges = np.zeros(len(out_a), dtype=merges.dtype)
        merges["a"] = out_a
        merges["b"] = out_b
        merges["score"] = out_s
    return nodes, merges


def mutex(rag: Rag, bias: float) -> tuple[np.ndarray, np.ndarray]:
    """Mutex watershed on the RAG (mwatershed): weight = mean affinity - ``bias``; returns (nodes, merges) where
    merges lists (a, b) pairs joined (score = 1 - mean affinity of that contact)."""
    import mwatershed

    nodes = np.unique(np.concatenate([rag.u, rag.v]))
    merges = np.zeros(0, dtype=[("a", np.uint64), ("b", np.uint64), ("score", np.float64)])
    if len(rag) == 0:
        return nodes, merges
    mean = rag.mean
    ua = np.searchsorted(nodes, rag.u)
    va = np.searchsorted(nodes, rag.v)
    # mwatershed wants small integer node ids; sort by |weight| descending, ties by edge index (deterministic)
    weight = mean - bias
    order = np.lexsort((np.arange(len(weight)), -np.abs(weight)))
    edges = [(bool(weight[i] > 0), int(ua[i]), int(va[i])) for i in order]
    pairs = np.asarray(mwatershed.cluster(edges), dtype=np.int64).reshape(-1, 2)
    # turn the clustering into merges (node -> first node of its cluster), score by that contact
    seg = np.arange(len(nodes))
    if len(pairs):
        seg[pairs[:, 0]] = pairs[:, 1]
    same = seg[ua] == seg[va]
    uf = UnionFind(len(nodes))
    out = []
    for i in np.flatnonzero(same)[np.argsort(1.0 - mean[same], kind="stable")]:
        if uf.find(ua[i]) != uf.find(va[i]):
            uf.union(ua[i], va[i])
            out.append((nodes[ua[i]], nodes[va[i]], 1.0 - mean[i]))
    if out:
        merges = np.zeros(len(out), dtype=merges.dtype)
        merges["a"] = [o[0] for o in out]
        merges["b"] = [o[1] for o in out]
        merges["score"] = [o[2] for o in out]
    return nodes, merges


def agglomerate(rag: Rag, params: dict, edge_model=None) -> tuple[np.ndarray, np.ndarray]:
    """Run the configured method (``params['agglomerate']``) on the merged RAG; returns (nodes, merges).
    ``edge_model`` (:class:`connectomix.segment.edges.EdgeModel`) scores the edges for method 'learned'."""
    p = params["agglomerate"]
    if p["method"] in ("mean", "quantile"):
        return hierarchical(rag, p["threshold"], p["method"], p["quantile"])
    if p["method"] == "mutex":
        return mutex(rag, p["mutex_bias"])
    if p["method"] == "learned":
        if edge_model is None:
            raise ValueError("segment.agglomerate.method 'learned' needs an edge model (agglomerate.edge_model)")
        return hierarchical(learned_graph(rag, edge_model), p["threshold"], "mean")
    raise ValueError(f"segment.agglomerate.method must be 'mean', 'quantile', 'mutex' or 'learned', "
                     f"got {p['method']!r}")


def lookup_table(nodes: np.ndarray, merges: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fragment -> segment table from a merge history (merges with score < ``threshold`` when given).

    Returns ``(fragments, segments)``, both uint64 and sorted by fragment, listing only fragments whose segment id
    differs from their own id; every other fragment is its own segment. A segment's id is its lowest fragment id.
    """
    if threshold is not None:
        merges = merges[merges["score"] < threshold]
    if len(merges) == 0 or len(nodes) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    a = np.searchsorted(nodes, merges["a"])
    b = np.searchsorted(nodes, merges["b"])
    uf = UnionFind(len(nodes))
    for x, y in zip(a.tolist(), b.tolist()):
        uf.union(x, y)
    roots = uf.roots()
    lowest = np.full(len(nodes), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lowest, roots, np.arange(len(nodes)))  # nodes are sorted: lowest index = lowest id
    segment = nodes[lowest[roots]]
    changed = segment != nodes
    return nodes[changed].astype(np.uint64), segment[changed].astype(np.uint64)


def apply_lut(labels: np.ndarray, fragments: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Relabel a fragment array through a sorted (fragments, segments) table; unlisted ids map to themselves."""
    import fastremap

    if len(fragments) == 0:
        return labels.astype(np.uint64, copy=True)
    present = fastremap.unique(labels)
    idx = np.searchsorted(fragments, present)
    idx = np.minimum(idx, len(fragments) - 1)
    hit = fragments[idx] == present
    if not hit.any():
        return labels.astype(np.uint64, copy=True)
    mapping = {int(k): int(v) for k, v in zip(present[hit], segments[idx[hit]])}
    return fastremap.remap(np.ascontiguousarray(labels, dtype=np.uint64), mapping, preserve_missing_labels=True)
