"""``connectomix segment train-edges``: train the edge classifier of ``agglomerate.method: learned`` on finished
workflow runs with ground truth (phantoms: ``gt/labels`` in the volume).

Per dataset folder (``results/{dataset}``): the region graph of its fragments and affinities (the workflow's,
recomputed over the whole volume with histograms and z counts, face-cut fragments joined as the workflow joins
them), and per edge the truth "same object": the two regions' majority ground-truth objects are the same. Edges
touching a region with no labelled voxel are left out. Validation datasets report the merge decision F1 (P >= 0.5
vs "same object") on z and in-section edges, beside that of the mean affinity at 0.5, and are recorded in the model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from connectomix import io
from connectomix.segment.agglomerate import apply_lut, lookup_table
from connectomix.segment.edges import EdgeModel, edge_features, fit
from connectomix.segment.rag import Rag, volume_rag
from connectomix.segment.stitch import AFFINITIES, FRAGMENTS, affinities_weights, join_face_cuts


def dataset_edges(dataset) -> dict:
    """Features, truth, known mask, z flag and mean affinity per region-graph edge of a finished run."""
    from connectomix.evaluate.segmentation import contingency, majority_of

    dataset = Path(dataset)
    volume, work = dataset / "volume.zarr", dataset / "segment"
    for need in (volume / FRAGMENTS, volume / "gt" / "labels", work / "graph.npz"):
        if not need.exists():
            raise FileNotFoundError(f"{need} is missing: train-edges needs a finished workflow run on a dataset "
                                    "with ground truth (gt/labels), e.g. a phantom")
    meta = io.read_meta(volume, AFFINITIES)
    offsets = [list(map(int, o)) for o in meta.attrs["offsets"]]
    fragments = np.asarray(io.open_array(volume, FRAGMENTS)[...])
    affs = np.asarray(io.open_array(volume, AFFINITIES)[...])
    rag = volume_rag(fragments, affs, offsets)
    workflow_graph = Rag.from_npz(work / "graph.npz")
    rag.same_u, rag.same_v = workflow_graph.same_u, workflow_graph.same_v
    nodes, forced, graph = join_face_cuts(rag)
    regions = apply_lut(fragments, *lookup_table(nodes, forced))
    gt = np.asarray(io.open_array(volume, "gt/labels")[...])
    table = contingency(gt, regions)
    owner_u, owner_v = majority_of(table, graph.u), majority_of(table, graph.v)
    features = edge_features(graph)
    return {"features": features, "truth": (owner_u == owner_v).astype(np.float64),
            "known": (owner_u > 0) & (owner_v > 0), "is_z": features[:, 0] > 0.5, "mean": graph.mean,
            "weights_sha256": affinities_weights(meta.attrs), "dataset": str(dataset)}


def decision_f1(score: np.ndarray, edges: dict) -> dict:
    """F1 of "merge when score >= 0.5" against the truth, on z and in-section edges with known truth."""
    out = {}
    merge = score >= 0.5
    for part, kind in (("z", edges["is_z"]), ("in_plane", ~edges["is_z"])):
        sel = edges["known"] & kind
        truth = edges["truth"][sel] > 0
        tp = int((merge[sel] & truth).sum())
        fp, fn = int((merge[sel] & ~truth).sum()), int((~merge[sel] & truth).sum())
        out[part] = {"edges": int(sel.sum()), "f1": 2 * tp / max(2 * tp + fp + fn, 1)}
    return out


def train_edges(datasets, out, validate=(), **options) -> dict:
    """Train on ``datasets`` (finished run folders), score on ``validate``, write the model JSON to ``out``;
    ``options`` go to :func:`connectomix.segment.edges.fit` (hidden, epochs, lr, seed)."""
    start = time.perf_counter()
    train = [dataset_edges(d) for d in datasets]
    if not train:
        raise ValueError("train-edges needs at least one training dataset folder")
    features = np.concatenate([e["features"][e["known"]] for e in train])
    truth = np.concatenate([e["truth"][e["known"]] for e in train])
    shas = sorted({e["weights_sha256"] for e in train if e["weights_sha256"]})
    model = fit(features, truth, **options,
                provenance={"datasets": [str(d) for d in datasets], "affinities_weights_sha256": shas})
    validation = []
    for d in validate:
        edges = dataset_edges(d)
        validation.append({"dataset": str(d), "learned": decision_f1(model.predict(edges["features"]), edges),
                           "mean_affinity": decision_f1(edges["mean"], edges)})
    model.record["training"]["validation"] = validation
    model.record["training"]["seconds"] = round(time.perf_counter() - start, 1)
    sha = model.save(out)
    return {"out": str(out), "sha256": sha, "edges": int(len(truth)), "validation": validation}


def add_arguments(sub) -> None:
    """``segment train-edges --datasets DIR ... --out FILE [--validate DIR ...]``."""
    p = sub.add_parser("train-edges", help="train the edge classifier of agglomerate.method 'learned'")
    p.add_argument("--datasets", nargs="+", required=True, help="finished run folders with gt/labels (train)")
    p.add_argument("--validate", nargs="*", default=[], help="finished run folders to score the model on")
    p.add_argument("--out", required=True, help="model JSON to write (e.g. models/phantom/edges.json)")
    p.add_argument("--hidden", nargs="*", type=int, help="hidden layer widths (default: fit's)")
    p.add_argument("--epochs", type=int, help="full-batch training steps (default: fit's)")
    p.add_argument("--seed", type=int, help="initialisation seed (default: fit's)")
    p.set_defaults(func=_run)


def _run(args) -> None:
    options = {k: getattr(args, k) for k in ("hidden", "epochs", "seed") if getattr(args, k) is not None}
    print(json.dumps(train_edges(args.datasets, args.out, args.validate, **options), indent=1))


__all__ = ["EdgeModel", "dataset_edges", "decision_f1", "train_edges"]
