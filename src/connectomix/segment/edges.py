"""Learned edge scores for the agglomeration (``agglomerate.method: learned``): the z-linking step.

Whether two fragments belong to one neuron is decided from features of their contact in the region graph, not
from the mean affinity alone: the affinity distribution over the contact (mean and quantiles), its size, how much
of it runs between sections, and how the contact compares with the two fragments' other contacts (the share of a
piece's contacts with the next section that go to this partner, whether it is the piece's strongest or largest
link there). A small multilayer perceptron, trained on phantom ground truth (:func:`fit`), turns them into
P(same object); the agglomeration then merges by the contact-weighted mean of that probability.

A model is a JSON file (no code runs when it is read): feature names, normalisation, weights, and what it was
trained on (the U-Net whose affinities it saw, the datasets, the validation scores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from connectomix.mlp import MLP
from connectomix.mlp import fit as fit_mlp
from connectomix.segment.rag import Rag

FORMAT = "connectomix-edge-model/1"
QUANTILES = (10, 25, 50, 75, 90)
FEATURES = (
    ("z", "1 if most of the contact lies between sections"),
    ("z_share", "contacts between sections / all contacts"),
    ("mean", "mean affinity over the contact (0-1)"),
    *((f"q{q}", f"{q}th percentile of the contact's affinities (0-1)") for q in QUANTILES),
    ("log_count", "log(1 + contacts)"),
    ("z_share_lo", "this contact's z contacts / all z contacts of the piece (smaller of the two pieces' values)"),
    ("z_share_hi", "the same, larger value"),
    ("log_z_total_lo", "log(1 + a piece's z contacts), smaller value"),
    ("log_z_total_hi", "the same, larger value"),
    ("log_z_degree_lo", "log(1 + a piece's number of z links), smaller value"),
    ("log_z_degree_hi", "the same, larger value"),
    ("mean_vs_best_lo", "mean affinity - the piece's best z link's mean affinity, smaller value"),
    ("mean_vs_best_hi", "the same, larger value"),
    ("z_vs_largest_lo", "z contacts / the piece's largest z link's z contacts, smaller value"),
    ("z_vs_largest_hi", "the same, larger value"),
    ("plane_share_lo", "in-section contacts / all in-section contacts of the piece, smaller value"),
    ("plane_share_hi", "the same, larger value"),
    ("log_plane_total_lo", "log(1 + a piece's in-section contacts), smaller value"),
    ("log_plane_total_hi", "the same, larger value"),
)
FEATURE_NAMES = tuple(name for name, _ in FEATURES)


def edge_features(rag: Rag) -> np.ndarray:
    """Features (``FEATURE_NAMES``, float32, one row per edge) of a region graph with affinity histograms and
    ``count_z``; rows are symmetric in the two fragments."""
    if not rag.has_count_z():
        raise ValueError("the region graph has no per-edge count of contacts between sections (count_z): it was "
                         "written by an older connectomix; rerun `segment block --step rag`")
    if len(rag) and not len(rag.hist_edge):
        raise ValueError("learned edge scores need the region graph's affinity histograms, and this one has none: "
                         "rerun `segment block --step rag` with agglomerate.method 'learned'")
    n = len(rag)
    if n == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    nodes = np.unique(np.concatenate([rag.u, rag.v]))
    ends = np.concatenate([np.searchsorted(nodes, rag.u), np.searchsorted(nodes, rag.v)])
    count = rag.count.astype(np.float64)
    count_z = rag.count_z.astype(np.float64)
    count_plane = count - count_z
    mean = rag.mean
    is_z = count_z > count / 2

    def per_node(values, reduce=np.add):
        out = np.zeros(len(nodes))
        reduce.at(out, ends, np.concatenate([values, values]))
        return out

    def both(per_piece, of_edge):
        """The edge's value against each of its two pieces, as (smaller, larger)."""
        a = of_edge(per_piece[ends[:n]])
        b = of_edge(per_piece[ends[n:]])
        return [np.minimum(a, b), np.maximum(a, b)]

    z_total, plane_total = per_node(count_z), per_node(count_plane)
    z_degree = per_node(is_z.astype(np.float64))
    best_z = per_node(np.where(is_z, mean, 0.0), np.maximum)
    largest_z = per_node(count_z, np.maximum)
    columns = [is_z.astype(np.float64), count_z / np.maximum(count, 1), mean]
    columns += [rag.quantile(q) for q in QUANTILES]
    columns.append(np.log1p(count))
    columns += both(z_total, lambda t: count_z / np.maximum(t, 1))
    columns += both(z_total, np.log1p)
    columns += both(z_degree, np.log1p)
    columns += both(best_z, lambda b: mean - b)
    columns += both(largest_z, lambda m: count_z / np.maximum(m, 1))
    columns += both(plane_total, lambda t: count_plane / np.maximum(t, 1))
    columns += both(plane_total, np.log1p)
    return np.stack(columns, 1).astype(np.float32)


class EdgeModel:
    """A trained edge classifier (:class:`connectomix.mlp.MLP` with its record): ``predict(features) -> P(same
    object)``."""

    def __init__(self, record: dict, path: str | None = None):
        self.record = record
        self.path = path
        self.mlp = MLP(record["normalisation"]["mean"], record["normalisation"]["scale"], record["layers"])

    @classmethod
    def load(cls, path) -> "EdgeModel":
        """Read and check a model file; a clear error names the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"edge model {path} does not exist (segment.agglomerate.edge_model)")
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"edge model {path} is not JSON: {e}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"edge model {path}: expected 'format': {FORMAT!r}, got "
                             f"{record.get('format') if isinstance(record, dict) else type(record).__name__!r}")
        if tuple(record.get("features", ())) != FEATURE_NAMES:
            raise ValueError(f"edge model {path} was trained on features {record.get('features')}, this "
                             f"connectomix computes {list(FEATURE_NAMES)}: retrain it (segment train-edges)")
        model = cls(record, str(path))
        model.mlp.check(len(FEATURE_NAMES), f"edge model {path}")
        return model

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(same object) per row of ``features`` (float64)."""
        return self.mlp.predict(features)

    def save(self, path) -> str:
        """Write the model JSON; returns its sha256."""
        text = json.dumps(self.record, indent=1, sort_keys=True) + "\n"
        Path(path).write_text(text)
        return hashlib.sha256(text.encode()).hexdigest()


def learned_graph(rag: Rag, model: EdgeModel) -> Rag:
    """``rag`` with each edge's affinity sum replaced by P(same object) x 255 x contacts, so that the mean-affinity
    agglomeration merges by the contact-weighted mean probability (pooled over merged contacts)."""
    p = model.predict(edge_features(rag)) if len(rag) else np.zeros(0)
    return dataclasses.replace(rag, total=p * 255.0 * rag.count.astype(np.float64))


def fit(features: np.ndarray, truth: np.ndarray, hidden=(32, 32), epochs: int = 800, lr: float = 0.01,
        seed: int = 0, provenance: dict | None = None) -> EdgeModel:
    """Train the classifier (:func:`connectomix.mlp.fit`, float64: deterministic for a seed)."""
    features = np.asarray(features, np.float64)
    truth = np.asarray(truth, np.float64)
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES) or len(features) != len(truth):
        raise ValueError(f"fit needs features (n, {len(FEATURE_NAMES)}) and n truths, got {features.shape} and "
                         f"{truth.shape}")
    if len(np.unique(truth)) < 2:
        raise ValueError("fit needs edges of both kinds (same object and not) in the ground truth")
    mlp, loss = fit_mlp(features, truth, hidden, epochs, lr, seed=seed)
    record = {
        "format": FORMAT,
        "features": list(FEATURE_NAMES),
        "normalisation": {"mean": mlp.mean.tolist(), "scale": mlp.scale.tolist()},
        "layers": [list(layer) for layer in mlp.layer_lists()],
        "training": {"edges": int(len(truth)), "same_object_share": float(truth.mean()), "hidden": list(hidden),
                     "epochs": epochs, "lr": lr, "seed": seed, "final_loss": loss, **(provenance or {})},
    }
    return EdgeModel(record)
