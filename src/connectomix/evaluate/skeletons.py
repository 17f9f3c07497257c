"""Skeleton-based accuracy: expected run length (ERL) of the segmentation over ground-truth skeletons, and
split / merge counts along them.

Ground-truth skeletons are kimimaro skeletons of ``gt/labels`` (the same parameters and post-processing as the
skeleton stage). Each skeleton vertex takes the predicted segment id found at its voxel (before smoothing, so
that every vertex lies in its ground-truth object; lengths are those of the smoothed skeleton).

* An edge is *correct* when both ends carry the same non-zero segment and that segment is not a merger.
* A segment is a *merger* when at least ``min_vertices`` vertices of two or more ground-truth skeletons carry it.
* A *run* is the correct cable of one ground-truth skeleton inside one segment (as in funlib.evaluate);
  ``erl_nm = sum(run_length^2) / total ground-truth cable``. ``gt_erl_nm`` is the same with the ground truth as
  the segmentation: ``sum(L_i^2) / sum(L_i)``, the upper bound.
* ``splits`` = sum over skeletons of (segments holding at least ``min_vertices`` of its vertices) - 1;
  ``merges`` = sum over segments of (skeletons it holds at least ``min_vertices`` vertices of) - 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from connectomix.evaluate import write_stage_metrics
from connectomix.io import open_array, read_meta
from connectomix.provenance import input_digests, record
from connectomix.skeletonize.core import skeletonize_whole
from connectomix.skeletonize.params import resolve
from connectomix.skeletonize.tree import smooth as smooth_skeleton


def edge_lengths(skel) -> np.ndarray:
    """Length (nm) of every edge of a skeleton."""
    return np.linalg.norm(skel.vertices[skel.edges[:, 0]] - skel.vertices[skel.edges[:, 1]], axis=1)


def vertex_labels(skel, labels: np.ndarray, voxel_size, offset_nm=(0, 0, 0)) -> np.ndarray:
    """The label under each vertex (positions nm (z, y, x) -> nearest voxel, clipped to the volume)."""
    idx = np.rint((skel.vertices - np.asarray(offset_nm, float)) / np.asarray(voxel_size, float)).astype(np.int64)
    idx = np.clip(idx, 0, np.asarray(labels.shape) - 1)
    return np.asarray(labels[idx[:, 0], idx[:, 1], idx[:, 2]])


def run_length_metrics(gt_skels: dict, pred_labels: dict[int, np.ndarray], min_vertices: int = 2) -> dict:
    """ERL, its ground-truth upper bound and split/merge counts from GT skeletons and the predicted label at each
    of their vertices (``pred_labels[gt_id]``, aligned with the vertices)."""
    # Which skeletons each predicted segment holds (enough vertices to count).
    holders: dict[int, set] = {}
    splits = 0
    for gid, skel in gt_skels.items():
        ids, counts = np.unique(pred_labels[gid], return_counts=True)
        held = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_vertices]
        splits += max(len(held) - 1, 0)
        for i in held:
            holders.setdefault(i, set()).add(gid)
    mergers = {i for i, held in holders.items() if len(held) > 1}
    merges = sum(len(held) - 1 for held in holders.values())
    total = 0.0
    squares = 0.0
    gt_squares = 0.0
    correct_total = 0.0
    for gid, skel in gt_skels.items():
        if len(skel.edges) == 0:
            continue
        length = edge_lengths(skel)
        lab = pred_labels[gid]
        a, b = lab[skel.edges[:, 0]], lab[skel.edges[:, 1]]
        ok = (a == b) & (a != 0) & ~np.isin(a, list(mergers))
        runs: dict[int, float] = {}
        for seg, ln in zip(a[ok], length[ok]):
            runs[int(seg)] = runs.get(int(seg), 0.0) + float(ln)
        squares += sum(r * r for r in runs.values())
        correct_total += float(length[ok].sum())
        L = float(length.sum())
        total += L
        gt_squares += L * L
    return {
        "erl_nm": squares / total if total else 0.0,
        "gt_erl_nm": gt_squares / total if total else 0.0,
        "erl_fraction": squares / gt_squares if gt_squares else 0.0,
        "splits": int(splits),
        "merges": int(merges),
        "merging_segments": len(mergers),
        "gt_skeletons": len(gt_skels),
        "gt_cable_nm": total,
        "correct_cable_fraction": correct_total / total if total else 0.0,
    }


def evaluate(volume, seg_array: str = "segmentation", gt_array: str = "gt/labels", objects: str | None = None,
             kinds=("neuron", "axon"), params: dict | None = None, min_vertices: int = 2,
             parallel: int = 1) -> tuple[dict, dict]:
    """Skeletonize ``gt_array`` (whole volume) and score ``seg_array`` along the skeletons; returns
    ``(metrics, context)``."""
    gt = open_array(volume, gt_array)
    seg = open_array(volume, seg_array)
    if tuple(seg.shape) != tuple(gt.shape):
        raise ValueError(f"{seg_array} shape {seg.shape} differs from {gt_array} shape {gt.shape}")
    truth = GroundTruthSkeletons(volume, gt_array, objects, kinds, params, parallel)
    metrics = truth.score(np.asarray(seg[...]), min_vertices)
    context = {"kinds": list(kinds) if truth.filtered else "all", "min_vertices": min_vertices,
               "min_segment_voxels": truth.min_segment_voxels}
    return metrics, context


class GroundTruthSkeletons:
    """The ground-truth skeletons of a volume (objects of ``kinds`` in the ``objects`` table when it exists, at
    least ``min_segment_voxels``), made once; :meth:`score` scores any segmentation of the volume along them."""

    def __init__(self, volume, gt_array: str = "gt/labels", objects: str | None = None, kinds=("neuron", "axon"),
                 params: dict | None = None, parallel: int = 1):
        import fastremap

        p = resolve(params)
        meta = read_meta(volume, gt_array)
        self.voxel_size, self.offset_nm = meta.voxel_size, meta.offset_nm
        gt = np.asarray(open_array(volume, gt_array)[...])
        keep = None
        if objects and Path(objects).exists():
            import pandas as pd

            table = pd.read_parquet(objects)
            keep = set(int(i) for i in table.loc[table["kind"].isin(list(kinds)), "id"])
        self.filtered = keep is not None
        self.min_segment_voxels = int(p["min_segment_voxels"])
        ids, counts = fastremap.unique(gt, return_counts=True)
        big = {int(i) for i, c in zip(ids, counts) if i != 0 and c >= self.min_segment_voxels}
        if keep is not None:
            big &= keep
        # Labels are looked up on the unsmoothed skeletons (vertices on voxel centres, inside their object); the
        # smoothed ones (same vertices, same edges, moved) give the lengths. A smoothed vertex of a thin neurite can
        # round to a voxel outside it, which would count as a split of the ground truth itself.
        smooth = p["smooth"]
        unsmoothed = {**p, "smooth": {**smooth, "iterations": 0}}
        self.raw = {k: s for k, s in skeletonize_whole(gt, meta.voxel_size, unsmoothed, meta.offset_nm,
                                                       parallel).items() if k in big and len(s.edges)}
        self.smoothed = {k: smooth_skeleton(s, int(smooth["iterations"]), float(smooth["max_edge_nm"]))
                         for k, s in self.raw.items()}

    def score(self, seg: np.ndarray, min_vertices: int = 2) -> dict:
        """ERL and split / merge counts of the segmentation ``seg`` (the volume's shape) along the skeletons."""
        pred = {k: vertex_labels(s, seg, self.voxel_size, self.offset_nm) for k, s in self.raw.items()}
        return run_length_metrics(self.smoothed, pred, min_vertices)


def add_arguments(subparsers) -> None:
    """The ``evaluate skeletons`` action."""
    p = subparsers.add_parser("skeletons", help="ERL and split/merge counts of `segmentation` along GT skeletons")
    p.add_argument("--volume", required=True, help="the dataset's OME-Zarr (results/{dataset}/volume.zarr)")
    p.add_argument("--seg-array", default="segmentation", help="predicted labels (default segmentation)")
    p.add_argument("--gt-array", default="gt/labels", help="ground-truth labels (default gt/labels)")
    p.add_argument("--objects", default=None, help="gt/objects.parquet: restrict to --kinds (default: all labels)")
    p.add_argument("--kinds", nargs="+", default=["neuron", "axon"], help="object kinds scored (default neuron axon)")
    p.add_argument("--params", default="{}", help="`skeletonize:` config section as JSON")
    p.add_argument("--min-vertices", type=int, default=2,
                   help="vertices a segment must hold of a skeleton to count for splits/merges (default 2)")
    p.add_argument("--threads", type=int, default=1, help="kimimaro processes (default 1)")
    p.add_argument("--out", required=True, help="eval/skeletons.json to write")
    p.add_argument("--dataset", default="", help="dataset name, for the record")
    p.set_defaults(func=run)


def run(args) -> int:
    params = json.loads(args.params)
    metrics, context = evaluate(args.volume, args.seg_array, args.gt_array, args.objects, args.kinds, params,
                                args.min_vertices, args.threads)
    write_stage_metrics(args.out, "skeletons", metrics, dataset=args.dataset, context=context,
                        provenance=record({"skeletonize": params},
                                          input_digests(args.volume, [args.seg_array, args.gt_array])))
    print(json.dumps(metrics, sort_keys=True))
    return 0
