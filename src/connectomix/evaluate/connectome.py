"""Connectome accuracy: predicted neuron -> neuron edges against ``gt/edges.parquet``.

Predicted segment ids map to ground-truth labels by maximum voxel overlap (:func:`evaluate.synapses.segment_to_gt`);
predicted edges are summed per mapped (pre, post) pair (a segment with no overlap keeps its own, never-true key).
Over pairs with at least ``min_synapses`` synapses on each side:

* ``edge_precision``, ``edge_recall``, ``edge_f1``: set overlap of predicted and true neuron pairs;
* ``synapse_count_pearson``: Pearson correlation of synapse counts per edge over the union of both edge sets
  (0 where a side lacks the edge); null when fewer than two edges or a constant side.
"""

from __future__ import annotations

import json

import numpy as np

from connectomix import io
from connectomix.evaluate import write_stage_metrics
from connectomix.evaluate.synapses import prf, segment_to_gt


def edge_counts(edges, mapping=None, min_synapses: int = 1) -> dict:
    """{(pre, post): synapses} with ids mapped through ``mapping`` (ids missing from it become ('pred', id))."""
    lut = mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping or {})
    out: dict = {}
    for pre, post, n in zip(edges["pre"].tolist(), edges["post"].tolist(), edges["n_synapses"].tolist()):
        if mapping is not None:
            pre = lut.get(int(pre), ("pred", int(pre)))
            post = lut.get(int(post), ("pred", int(post)))
        key = (pre if isinstance(pre, tuple) else int(pre), post if isinstance(post, tuple) else int(post))
        out[key] = out.get(key, 0) + int(n)
    return {k: v for k, v in out.items() if v >= min_synapses}


def evaluate(pred_edges, gt_edges, mapping=None, min_synapses: int = 1) -> dict:
    """Edge P/R/F1 and the synapse-count correlation (see the module docstring)."""
    pred = edge_counts(pred_edges, mapping, min_synapses)
    gt = edge_counts(gt_edges, None, min_synapses)
    tp = len(set(pred) & set(gt))
    m = {f"edge_{k}": v for k, v in prf(tp, len(pred), len(gt)).items()}
    union = sorted(set(pred) | set(gt), key=str)
    a = np.array([pred.get(k, 0) for k in union], float)
    b = np.array([gt.get(k, 0) for k in union], float)
    r = float(np.corrcoef(a, b)[0, 1]) if len(union) > 1 and a.std() > 0 and b.std() > 0 else None
    m.update(synapse_count_pearson=r, n_pred_edges=len(pred), n_gt_edges=len(gt), n_true_edges=tp,
             n_pred_synapses=int(a.sum()), n_gt_synapses=int(b.sum()))
    return m


def add_arguments(subparsers) -> None:
    """The ``connectomix evaluate connectome`` action."""
    p = subparsers.add_parser("connectome", help="edge P/R/F1 and synapse-count correlation vs gt/edges.parquet")
    p.add_argument("--edges", required=True, help="predicted edges.parquet (neuron pairs)")
    p.add_argument("--gt-edges", required=True, help="gt/edges.parquet")
    p.add_argument("--volume", help="OME-Zarr with the segmentation and gt/labels (id mapping; identity if absent)")
    p.add_argument("--segmentation", default="segmentation")
    p.add_argument("--gt-labels", default="gt/labels")
    p.add_argument("--min-synapses", type=int, default=1, help="synapses for a pair to count as an edge")
    p.add_argument("--out", required=True, help="eval/connectome.json to write")
    p.set_defaults(func=run)


def run(args) -> int:
    """Evaluate and write ``eval/connectome.json``."""
    import pandas as pd

    mapping = None
    if args.volume:
        mapping = segment_to_gt(io.open_array(args.volume, args.segmentation), io.open_array(args.volume, args.gt_labels))
    metrics = evaluate(pd.read_parquet(args.edges), pd.read_parquet(args.gt_edges), mapping, args.min_synapses)
    write_stage_metrics(args.out, "connectome", metrics, min_synapses=args.min_synapses,
                        inputs={"edges": str(args.edges), "gt_edges": str(args.gt_edges)})
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0
