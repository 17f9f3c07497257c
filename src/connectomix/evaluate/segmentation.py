"""Segmentation accuracy: variation of information (split, merge), adapted Rand error, worst objects, and the
VOI-versus-threshold curve of the agglomeration, and the VOI of the fragments' best agglomeration by majority
overlap (``fragment_bound``), which tells the error of the fragments from that of the agglomeration.

Metrics come from a sparse contingency table (pairs of labels and their voxel counts, ``np.unique`` on label
pairs), accumulated slab by slab, so volumes need not fit in memory twice. Voxels whose ground truth is in
``ignore`` (default 0: boundary / extracellular space) are left out, as in scikit-image with
``ignore_labels=(0,)``: the values equal ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=...)``
(split = H(seg | gt), merge = H(gt | seg), bits) and ``adapted_rand_error(gt, seg, ignore_labels=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.evaluate import write_stage_metrics
from connectomix.segment.agglomerate import apply_lut, lookup_table
from connectomix.segment.rag import Rag
from connectomix.segment.stitch import agglomerate_graph, stage_edge_model


@dataclass
class Contingency:
    """Sparse contingency table: ``gt[i]``, ``seg[i]`` label pair and ``count[i]`` voxels."""

    gt: np.ndarray
    seg: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> "Contingency":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def __add__(self, other: "Contingency") -> "Contingency":
        return _compact(np.concatenate([self.gt, other.gt]), np.concatenate([self.seg, other.seg]),
                        np.concatenate([self.count, other.count]))

    def map_seg(self, old: np.ndarray, new: np.ndarray) -> "Contingency":
        """The table after relabelling segments (sorted ``old`` ids -> ``new``; others unchanged)."""
        seg = self.seg.copy()
        if len(old):
            idx = np.minimum(np.searchsorted(old, seg), len(old) - 1)
            hit = old[idx] == seg
            seg[hit] = new[idx[hit]]
        return _compact(self.gt, seg, self.count)


def _compact(gt, seg, count) -> Contingency:
    """Sum counts of identical (gt, seg) pairs."""
    if len(gt) == 0:
        return Contingency.empty()
    g, gi = np.unique(gt, return_inverse=True)
    s, si = np.unique(seg, return_inverse=True)
    key = gi.astype(np.int64) * len(s) + si
    keys, inv = np.unique(key, return_inverse=True)
    counts = np.bincount(inv, weights=count.astype(np.float64)).astype(np.int64)
    return Contingency(g[keys // len(s)].astype(np.uint64), s[keys % len(s)].astype(np.uint64), counts)


def contingency(gt: np.ndarray, seg: np.ndarray, ignore=(0,), slab: int = 16) -> Contingency:
    """Contingency table of two label arrays of the same shape (numpy or zarr), slab by slab along axis 0."""
    if tuple(gt.shape) != tuple(seg.shape):
        raise ValueError(f"ground truth {tuple(gt.shape)} and segmentation {tuple(seg.shape)} differ in shape")
    table = Contingency.empty()
    for z in range(0, gt.shape[0], slab):
        g = np.asarray(gt[z:z + slab]).ravel().astype(np.uint64)
        s = np.asarray(seg[z:z + slab]).ravel().astype(np.uint64)
        keep = ~np.isin(g, np.asarray(ignore, dtype=np.uint64)) if len(ignore) else slice(None)
        g, s = g[keep], s[keep]
        if len(g) == 0:
            continue
        table = table + _compact(g, s, np.ones(len(g), np.int64))
    return table


def _entropy_terms(table: Contingency):
    n = table.count.sum()
    p = table.count / n
    g_ids, g_inv = np.unique(table.gt, return_inverse=True)
    s_ids, s_inv = np.unique(table.seg, return_inverse=True)
    pg = np.bincount(g_inv, weights=p)
    ps = np.bincount(s_inv, weights=p)
    # H(seg|gt) = -sum p_ij log2(p_ij / p_i); H(gt|seg) = -sum p_ij log2(p_ij / p_j)
    split_terms = -p * np.log2(p / pg[g_inv])
    merge_terms = -p * np.log2(p / ps[s_inv])
    return g_ids, g_inv, s_ids, s_inv, split_terms, merge_terms


def voi(table: Contingency) -> tuple[float, float]:
    """(split, merge) variation of information in bits: H(seg | gt), H(gt | seg)."""
    if len(table.count) == 0:
        return 0.0, 0.0
    *_, split_terms, merge_terms = _entropy_terms(table)
    return float(split_terms.sum()), float(merge_terms.sum())


def adapted_rand(table: Contingency, alpha: float = 0.5) -> tuple[float, float, float]:
    """(error, precision, recall) of the adapted Rand index (SNEMI3D), as scikit-image computes them."""
    c = table.count.astype(np.float64)
    if len(c) == 0:
        return 0.0, 1.0, 1.0
    _, g_inv = np.unique(table.gt, return_inverse=True)
    _, s_inv = np.unique(table.seg, return_inverse=True)
    a = np.bincount(g_inv, weights=c)
    b = np.bincount(s_inv, weights=c)
    sum_p2 = c @ c - c.sum()
    sum_a2 = a @ a - a.sum()
    sum_b2 = b @ b - b.sum()
    precision = sum_p2 / sum_a2 if sum_a2 else 1.0
    recall = sum_p2 / sum_b2 if sum_b2 else 1.0
    denom = alpha * sum_a2 + (1 - alpha) * sum_b2
    return float(1.0 - sum_p2 / denom) if denom else 0.0, float(precision), float(recall)


def worst_objects(table: Contingency, k: int = 10) -> dict:
    """The ground-truth objects split the most and the segments merging the most, by VOI contribution."""
    if len(table.count) == 0:
        return {"splits": [], "merges": []}
    g_ids, g_inv, s_ids, s_inv, split_terms, merge_terms = _entropy_terms(table)
    split_by_gt = np.bincount(g_inv, weights=split_terms)
    merge_by_seg = np.bincount(s_inv, weights=merge_terms)
    pieces = np.bincount(g_inv)
    parts = np.bincount(s_inv)
    gt_vox = np.bincount(g_inv, weights=table.count)
    seg_vox = np.bincount(s_inv, weights=table.count)
    splits = [{"gt_id": int(g_ids[i]), "voi_split": float(split_by_gt[i]), "segments": int(pieces[i]),
               "voxels": int(gt_vox[i])} for i in np.argsort(-split_by_gt)[:k] if split_by_gt[i] > 0]
    merges = [{"segment_id": int(s_ids[i]), "voi_merge": float(merge_by_seg[i]), "gt_objects": int(parts[i]),
               "voxels": int(seg_vox[i])} for i in np.argsort(-merge_by_seg)[:k] if merge_by_seg[i] > 0]
    return {"splits": splits, "merges": merges}


def fragment_bound(table: Contingency) -> Contingency:
    """The table of the best agglomeration a fragmentation allows, by majority overlap (as gala's
    ``best_possible_segmentation``): every fragment joins the ground-truth object holding most of its evaluated
    voxels (ties: the lowest id). ``table``: ground truth x fragments. Its VOI separates the error the fragments
    carry (voxels on the wrong side of a fragment border) from the error of the agglomeration's decisions."""
    if len(table.count) == 0:
        return table
    return table.map_seg(*majority_objects(table))


def majority_objects(table: Contingency) -> tuple[np.ndarray, np.ndarray]:
    """``(segments, objects)``: each segment of ``table`` with the ground-truth object holding most of its
    evaluated voxels (ties: the lowest id)."""
    order = np.lexsort((table.gt, -table.count, table.seg))  # per segment: the largest overlap first
    first = order[np.r_[True, table.seg[order][1:] != table.seg[order][:-1]]]
    return table.seg[first], table.gt[first]


def majority_of(table: Contingency, ids) -> np.ndarray:
    """Per id in ``ids`` (any order), its majority ground-truth object (:func:`majority_objects`); 0 for an id with
    no evaluated voxel."""
    ids = np.asarray(ids, np.uint64)
    segments, objects = majority_objects(table)  # segments ascending
    if not len(segments):
        return np.zeros(len(ids), np.uint64)
    pos = np.minimum(np.searchsorted(segments, ids), len(segments) - 1)
    return np.where(segments[pos] == ids, objects[pos], 0).astype(np.uint64)


def metrics(gt, seg, ignore=(0,)) -> dict:
    """``voi_split``, ``voi_merge``, ``voi`` (their sum), ``arand``, precision and recall of ``seg`` against ``gt``."""
    table = contingency(gt, seg, ignore)
    split, merge = voi(table)
    are, precision, recall = adapted_rand(table)
    return {"voi_split": split, "voi_merge": merge, "voi": split + merge, "arand": are,
            "rand_precision": precision, "rand_recall": recall}


def per_section(labels: np.ndarray) -> np.ndarray:
    """Labels made unique per z section ((z, id) pairs -> new ids; 0 stays 0), for 2D evaluation of 3D data."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.uint64)
    next_id = 0
    for z in range(labels.shape[0]):
        ids, inv = np.unique(labels[z], return_inverse=True)
        new = np.arange(next_id + 1, next_id + 1 + len(ids), dtype=np.uint64)
        new[ids == 0] = 0
        out[z] = new[inv.reshape(labels[z].shape)]
        next_id += len(ids)
    return out


def threshold_sweep(gt, fragments, nodes: np.ndarray, merges: np.ndarray, thresholds, ignore=(0,),
                    sections: bool = False, base: Contingency | None = None) -> list[dict]:
    """VOI and ARAND at each agglomeration threshold, from the fragments and the merge history (one contingency
    table of ground truth x fragments, relabelled per threshold: no volume is rewritten). ``sections``: 2D
    evaluation against per-section ground truth (``per_section(gt)``): each threshold's segmentation is relabelled
    and split per section, so a merge across sections is no error. ``base``: the ground truth x fragments table,
    when already computed."""
    if base is None and not sections:
        base = contingency(gt, fragments, ignore)
    rows = []
    for t in sorted(float(x) for x in thresholds):
        frag, seg = lookup_table(nodes, merges, t)
        if sections:
            table = contingency(gt, per_section(apply_lut(fragments, frag, seg)), ignore)
        else:
            table = base.map_seg(frag, seg)
        split, merge = voi(table)
        are, _, _ = adapted_rand(table)
        rows.append({"threshold": t, "voi_split": split, "voi_merge": merge, "voi": split + merge, "arand": are,
                     "segments": int(len(np.unique(table.seg)))})
    return rows


def plot_sweep(rows: list[dict], path, chosen: float | None = None, title: str = "",
               bound: float | None = None) -> None:
    """PNG of VOI split, merge and sum (bits) and adapted Rand error against the agglomeration threshold;
    ``bound``: the VOI of the fragments' best agglomeration (``fragment_bound``), drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(t, [r["voi_split"] for r in rows], "o-", label="VOI split")
    ax.plot(t, [r["voi_merge"] for r in rows], "s-", label="VOI merge")
    ax.plot(t, [r["voi"] for r in rows], "k^-", label="VOI split + merge")
    ax.set_xlabel("agglomeration threshold (score = 1 - affinity, unitless)")
    ax.set_ylabel("variation of information (bits)")
    ax2 = ax.twinx()
    ax2.plot(t, [r["arand"] for r in rows], "r:", label="adapted Rand error")
    ax2.set_ylabel("adapted Rand error (0-1)", color="r")
    if bound is not None:
        ax.axhline(bound, color="k", ls=":", lw=1, label=f"best agglomeration of the fragments {bound:.2f}")
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"configured threshold {chosen:g}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper center")
    ax.set_title(title or "segmentation accuracy vs agglomeration threshold")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def load_ground_truth(volume=None, gt_array=None, gt_file=None, gt_key=None, gt_format="auto") -> np.ndarray:
    """Ground-truth labels: an array of the dataset's OME-Zarr (``gt/labels``), an HDF5 file (``key``), or a folder
    of 2D images, one per section in name order: ``png-membrane`` (ISBI 2012: 0 = membrane; the instances are the
    4-connected components of the interior), ``png-boundary`` (nonzero = membrane, e.g. vnc-sstem's `membranes`;
    the instances are the components of the rest) or ``png-mask`` (nonzero voxels as they are, e.g. cleft masks:
    uint8 0/1)."""
    if gt_array:
        return np.asarray(io.open_array(volume, gt_array)[...])
    if not gt_file:
        raise ValueError("give --gt-array (an array of the volume) or --gt-file")
    path = Path(gt_file)
    fmt = gt_format
    if fmt == "auto":
        fmt = "png-membrane" if path.is_dir() else "hdf5" if path.suffix in (".h5", ".hdf5", ".hdf") else "zarr"
    if fmt == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f[gt_key or "stack"][...])
    if fmt == "zarr":
        import zarr

        return np.asarray(zarr.open(str(path), mode="r")[gt_key][...] if gt_key else zarr.open(str(path), "r")[...])
    if fmt in ("png-membrane", "png-boundary", "png-mask"):
        import cc3d
        from skimage.io import imread

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
        if not files:
            raise ValueError(f"{path}: no .png / .tif section images for ground-truth format {fmt!r}")
        sections = []
        for f in files:
            image = np.asarray(imread(f))
            image = image[..., 0] if image.ndim == 3 else image
            if sections and image.shape != sections[0].shape:
                raise ValueError(f"{f}: section shape {list(image.shape)} differs from {files[0].name}'s "
                                 f"{list(sections[0].shape)}")
            sections.append(image)
        if fmt == "png-mask":
            return np.stack([s > 0 for s in sections]).astype(np.uint8)
        interior = [s > 0 if fmt == "png-membrane" else s == 0 for s in sections]
        return np.stack([cc3d.connected_components(i, connectivity=4) for i in interior]).astype(np.uint64)
    raise ValueError(f"unknown ground-truth format {gt_format!r}")


def load_mask(path, key=None, fmt="auto") -> np.ndarray:
    """A binary mask (e.g. cleft ground truth) from a file: as :func:`load_ground_truth`, but 'auto' reads a folder
    as ``png-mask`` (nonzero = in the mask) rather than as membrane images."""
    if fmt == "auto" and Path(path).is_dir():
        fmt = "png-mask"
    return load_ground_truth(gt_file=path, gt_key=key, gt_format=fmt)


def evaluate(volume, work_dir, out, gt_array=None, gt_file=None, gt_key=None, gt_format="auto",
             gt_roi_offset=None, sections: bool = False, thresholds=None, plot=None, ignore=(0,),
             dataset: str = "") -> dict:
    """Evaluate ``segmentation`` (and the threshold sweep over the stored merge history) of a dataset against its
    ground truth; writes ``eval/segmentation.json`` via ``write_stage_metrics`` and the sweep PNG."""
    work_dir = Path(work_dir)
    setup_record = json.loads((work_dir / "setup.json").read_text())
    seg = np.asarray(io.open_array(volume, "segmentation")[...])
    frags = np.asarray(io.open_array(volume, "fragments")[...])
    gt = load_ground_truth(volume, gt_array, gt_file, gt_key, gt_format)
    if gt_roi_offset is not None:
        gt = gt[tuple(slice(o, o + s) for o, s in zip(gt_roi_offset, seg.shape))]
    if sections:  # 2D ground truth: each section's instances on their own
        gt, seg = per_section(gt), per_section(seg)  # the sweep splits each threshold's segmentation likewise
    table = contingency(gt, seg, ignore)
    split, merge = voi(table)
    are, precision, recall = adapted_rand(table)
    result = {"voi_split": split, "voi_merge": merge, "voi": split + merge, "arand": are,
              "rand_precision": precision, "rand_recall": recall,
              "segments": int(len(np.unique(seg))) - int((seg == 0).any())}
    frag_table = contingency(gt, per_section(frags) if sections else frags, ignore)
    b_split, b_merge = voi(fragment_bound(frag_table))
    result["fragment_bound"] = {"voi_split": b_split, "voi_merge": b_merge, "voi": b_split + b_merge,
                                "fragments": int(len(np.unique(frag_table.seg)))}
    sweep = []
    params = setup_record["params"]
    thresholds = thresholds or params["evaluation"]["thresholds"]
    if params["agglomerate"]["method"] in ("mean", "quantile", "learned"):
        rag = Rag.from_npz(work_dir / "graph.npz")
        nodes, merges = agglomerate_graph(rag, params, threshold=max(thresholds) + 1e-9,
                                          edge_model=stage_edge_model(work_dir))
        sweep = threshold_sweep(gt, frags, nodes, merges, thresholds, ignore, sections,
                                None if sections else frag_table)
    if plot:  # the workflow expects the figure: without a sweep (mutex: no merge threshold) it says so
        plot_sweep(sweep, plot, params["agglomerate"]["threshold"] if sweep else None, bound=b_split + b_merge,
                   title=f"{dataset} segmentation" + ("" if sweep else f": no threshold sweep for "
                                                      f"{params['agglomerate']['method']} agglomeration"))
    extra = {
        "dataset": dataset,
        "ignore_gt_labels": list(ignore),
        "evaluated_voxels": int(table.count.sum()),
        "per_section": sections,
        "worst": worst_objects(table),
        "sweep": sweep,
        "sweep_plot": str(plot) if plot else None,
        "threshold": params["agglomerate"]["threshold"],
        "method": params["agglomerate"]["method"],
        "info": {"voi_unit": "bits", "voi_split": "H(segmentation | ground truth)",
                 "voi_merge": "H(ground truth | segmentation)",
                 "fragment_bound": "VOI of the fragments agglomerated by majority overlap (each joins the "
                                   "ground-truth object holding most of its voxels): the error the fragments "
                                   "leave to any agglomeration"},
    }
    stage = {k: result[k] for k in ("voi_split", "voi_merge", "voi", "arand")}
    stage["fragment_bound_voi"] = b_split + b_merge
    write_stage_metrics(out, "segmentation", stage,
                        **extra, details=result)
    return {**result, **extra}


def add_arguments(subparsers) -> None:
    """The ``evaluate segmentation`` action."""
    p = subparsers.add_parser("segmentation", help="VOI / adapted Rand of `segmentation` against ground truth")
    p.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    p.add_argument("--work-dir", required=True, help="the segment stage folder (results/{dataset}/segment)")
    p.add_argument("--out", required=True, help="eval/segmentation.json to write")
    p.add_argument("--gt-array", help="ground-truth array inside the volume (phantom: gt/labels)")
    p.add_argument("--gt-file", help="ground truth outside the volume: HDF5 file, zarr, or folder of membrane PNGs")
    p.add_argument("--gt-key", help="dataset inside the HDF5/zarr file (default 'stack' for HDF5)")
    p.add_argument("--gt-format", default="auto", choices=["auto", "hdf5", "zarr", "png-membrane", "png-boundary"])
    p.add_argument("--gt-roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel of the ground truth where the volume starts (when the dataset used a roi)")
    p.add_argument("--per-section", action="store_true", help="2D evaluation: labels made unique per section")
    p.add_argument("--thresholds", type=float, nargs="+", help="sweep thresholds (default: from the config)")
    p.add_argument("--plot", help="PNG of the threshold sweep")
    p.add_argument("--ignore", type=int, nargs="*", default=[0], help="ground-truth labels left out (default 0)")
    p.add_argument("--dataset", default="", help="dataset name, for the record")
    p.set_defaults(func=run)


def run(args) -> int:
    result = evaluate(args.volume, args.work_dir, args.out, args.gt_array, args.gt_file, args.gt_key,
                      args.gt_format, args.gt_roi_offset, args.per_section, args.thresholds, args.plot,
                      tuple(args.ignore), args.dataset)
    print(json.dumps({k: result[k] for k in ("voi_split", "voi_merge", "arand", "segments")}, sort_keys=True))
    return 0
