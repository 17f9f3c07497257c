"""Partners decided jointly (``pairing: model``): every ordered pair (pre candidate, post candidate) of a cleft is
described by features of the cleft, of both sides and of the pair (:func:`pair_features`) and scored by a small
classifier (an MLP stored as JSON, :class:`PartnerModel`); the best pair wins, and the cleft is accepted when its
score (the ``partner_score``, 0..1) reaches ``min_partner_score``. The classifier learns from phantom ground
truth (``benchmarks/synapse_partners.py --train``): a pair is positive when it is the true (pre, post) pair of the
synapse the cleft matches, so clefts matching no synapse teach it to reject, too."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.mlp import MLP
from connectomix.mlp import fit as fit_mlp
from connectomix.synapses.partners import BANDS_NM, assign_partners, empty_assignment

NB = len(BANDS_NM)
SIDE = (["pre_mean", "post_mean", "d", "d_rank", "contact_frac", "log_contact", "log_voxels", "dist"]
        + [f"{k}_b{i}" for i in range(NB) for k in ("mpre", "mpost", "mcleft", "md", "logn", "frac")]
        + [f"md_rank_b{i}" for i in range(NB)])
FEATURES = (["cleft_log_voxels", "cleft_prob", "n_candidates"] + [f"a_{f}" for f in SIDE] + [f"b_{f}" for f in SIDE]
            + ["log_faces", "faces_frac", "cos", "d_diff"] + [f"md_diff_b{i}" for i in range(NB)])


def candidates(clefts, pairs, params: dict, voxel_size) -> pd.DataFrame:
    """Per (cleft, candidate segment with ``>= min_contact_voxels`` contact voxels): the side features of
    :data:`SIDE` (mean pre / post probability over its voxels near the cleft, their difference ``d`` and its rank
    among the cleft's candidates, share of the cleft's contact, log contact and shell voxels, distance of its
    point from the cleft centre in units of 100 nm) plus the point's offset from the centre (nm, ``oz oy ox``)."""
    cand = pairs[pairs["contact"] >= params["min_contact_voxels"]].copy()
    cand = cand[cand["id"].isin(clefts["id"])].reset_index(drop=True)
    cand["pre_mean"] = cand["sum_pre"] / cand["voxels"]
    cand["post_mean"] = cand["sum_post"] / cand["voxels"]
    cand["d"] = cand["pre_mean"] - cand["post_mean"]
    by = cand.groupby("id")
    cand["d_rank"] = by["d"].rank(ascending=False, method="first") - 1
    cand["contact_frac"] = cand["contact"] / by["contact"].transform("sum")
    cand["log_contact"] = np.log1p(cand["contact"])
    cand["log_voxels"] = np.log1p(cand["voxels"])
    for i in range(NB):
        n = cand[f"n_b{i}"].to_numpy(float)
        for k in ("pre", "post", "cleft"):
            cand[f"m{k}_b{i}"] = np.where(n > 0, cand[f"{k}_b{i}"] / np.maximum(n, 1), 0.0)
        cand[f"md_b{i}"] = cand[f"mpre_b{i}"] - cand[f"mpost_b{i}"]
        cand[f"logn_b{i}"] = np.log1p(n)
        total = cand.groupby("id")[f"n_b{i}"].transform("sum").to_numpy(float)
        cand[f"frac_b{i}"] = np.where(total > 0, n / np.maximum(total, 1), 0.0)
        cand[f"md_rank_b{i}"] = cand.groupby("id")[f"md_b{i}"].rank(ascending=False, method="first") - 1
    ctr = clefts.set_index("id")[["ctr_z", "ctr_y", "ctr_x"]].reindex(cand["id"]).to_numpy(float)
    off = (cand[["pt_z", "pt_y", "pt_x"]].to_numpy(float) - ctr) * np.asarray(voxel_size, float)
    cand["oz"], cand["oy"], cand["ox"] = off.T
    cand["dist"] = np.linalg.norm(off, axis=1) / 100.0
    return cand


def pair_features(clefts, pairs, params: dict, voxel_size, interfaces=None) -> pd.DataFrame:
    """Every ordered pair (a = pre, b = post) of distinct candidates of a cleft with the :data:`FEATURES` columns
    (cleft: log voxels, mean cleft probability, candidates / 10; both sides; pair: log and relative interface
    faces shared on the cleft, cosine of the angle between the two sides' points seen from the cleft centre,
    ``d_a - d_b``) and ``id, a, b``."""
    cand = candidates(clefts, pairs, params, voxel_size)
    keep = ["id", "segment", *SIDE, "oz", "oy", "ox"]
    a = cand[keep].rename(columns={c: f"a_{c}" for c in keep[1:]})
    b = cand[keep].rename(columns={c: f"b_{c}" for c in keep[1:]})
    out = a.merge(b, on="id")
    out = out[out["a_segment"] != out["b_segment"]].reset_index(drop=True)
    out = out.rename(columns={"a_segment": "a", "b_segment": "b"})
    info = clefts.set_index("id").reindex(out["id"])
    out["cleft_log_voxels"] = np.log1p(info["voxels"].to_numpy(float))
    out["cleft_prob"] = info["cleft_prob"].to_numpy(float)
    out["n_candidates"] = out["id"].map(cand.groupby("id").size()).to_numpy(float) / 10.0
    faces = np.zeros(len(out))
    if interfaces is not None and len(interfaces) and len(out):
        lo = np.minimum(out["a"].to_numpy(np.uint64), out["b"].to_numpy(np.uint64))
        hi = np.maximum(out["a"].to_numpy(np.uint64), out["b"].to_numpy(np.uint64))
        key = pd.MultiIndex.from_arrays([out["id"].to_numpy(np.uint64), lo, hi])
        table = interfaces.astype({"id": np.uint64, "segment_a": np.uint64, "segment_b": np.uint64})
        table = table.set_index(["id", "segment_a", "segment_b"])["faces"]
        faces = table.reindex(key).fillna(0).to_numpy(float)
    out["log_faces"] = np.log1p(faces)
    top = pd.Series(faces).groupby(out["id"].to_numpy()).transform("max").to_numpy()
    out["faces_frac"] = np.where(top > 0, faces / np.maximum(top, 1), 0.0)
    va = out[["a_oz", "a_oy", "a_ox"]].to_numpy(float)
    vb = out[["b_oz", "b_oy", "b_ox"]].to_numpy(float)
    norm = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    out["cos"] = np.where(norm > 0, (va * vb).sum(1) / np.maximum(norm, 1e-9), 0.0)
    out["d_diff"] = out["a_d"] - out["b_d"]
    for i in range(NB):
        out[f"md_diff_b{i}"] = out[f"a_md_b{i}"] - out[f"b_md_b{i}"]
    return out[["id", "a", "b", *FEATURES]]


class PartnerModel:
    """A small MLP over :data:`FEATURES` (:class:`connectomix.mlp.MLP`) from a JSON file: ``features``, ``mean``,
    ``std`` (standardisation) and ``layers`` (list of ``{"W": [[...]], "b": [...]}``)."""

    def __init__(self, spec: dict):
        if list(spec["features"]) != FEATURES:
            raise ValueError(f"partner model features {spec['features']} differ from this version's {FEATURES}")
        self.spec = spec
        self.mlp = MLP(spec["mean"], spec["std"], [(layer["W"], layer["b"]) for layer in spec["layers"]])
        self.mlp.check(len(FEATURES), "partner model")

    @classmethod
    def load(cls, path) -> "PartnerModel":
        """Read a model JSON (:func:`locate` resolves relative paths)."""
        return cls(json.loads(Path(locate(path)).read_text()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (0..1) for the rows of ``x`` (columns :data:`FEATURES`)."""
        return self.mlp.predict(x)


def locate(path) -> Path:
    """A relative model path: from the working directory, else from the repository (the shipped model)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    repo = Path(__file__).resolve().parents[3] / path
    if not repo.exists():
        raise FileNotFoundError(f"synapses.partner_model {path} not found (working directory or {repo.parent})")
    return repo


def model_digest(path) -> str:
    """sha256 of the model file (provenance)."""
    return hashlib.sha256(Path(locate(path)).read_bytes()).hexdigest()


def best_pairs(clefts, pairs, params: dict, voxel_size, interfaces=None, model: PartnerModel | None = None):
    """The highest-scoring ordered pair per cleft: DataFrame ``id, a, b, partner_score, faces`` (clefts with fewer
    than two candidates are absent)."""
    model = model or PartnerModel.load(params["partner_model"])
    feats = pair_features(clefts, pairs, params, voxel_size, interfaces)
    if feats.empty:
        return pd.DataFrame({"id": np.zeros(0, np.uint64), "a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
                             "partner_score": np.zeros(0), "faces": np.zeros(0, np.int64)})
    feats["partner_score"] = model.predict(feats[FEATURES].to_numpy(float))
    feats["faces"] = np.rint(np.expm1(feats["log_faces"])).astype(np.int64)
    best = feats.sort_values(["id", "partner_score", "a", "b"], ascending=[True, False, True, True])
    return best.drop_duplicates("id")[["id", "a", "b", "partner_score", "faces"]].reset_index(drop=True)


def assign(clefts, pairs, params: dict, interfaces=None, voxel_size=(1.0, 1.0, 1.0), model=None):
    """The partner assignment of ``params['pairing']``: the classifier for ``model`` (``model``: a loaded
    :class:`PartnerModel`, else ``params['partner_model']``; ``voxel_size`` in nm), else the rules of
    :func:`~connectomix.synapses.partners.assign_partners`; columns as there."""
    if params["pairing"] != "model":
        return assign_partners(clefts, pairs, params, interfaces)
    out = empty_assignment(clefts)
    if len(out) == 0 or pairs is None or len(pairs) == 0:
        return out
    return _assign_by_model(out, pairs, params, interfaces, voxel_size, model)


def _assign_by_model(out, pairs, params, interfaces, voxel_size, model):
    """``pairing: model``: the best-scoring ordered pair per cleft (:mod:`connectomix.synapses.partner_model`);
    accepted when its score reaches ``min_partner_score``, else ``low_score``; a cleft with one candidate is
    ``unclear_polarity``. ``score`` = ``partner_score``; ``polarity`` = half the pair's pre-minus-post difference."""
    cand = pairs[pairs["contact"] >= params["min_contact_voxels"]].copy()
    cand["pre_mean"] = cand["sum_pre"] / cand["voxels"]
    cand["post_mean"] = cand["sum_post"] / cand["voxels"]
    best = best_pairs(out, pairs, params, voxel_size, interfaces, model).set_index("id")
    side = cand.assign(d=cand["pre_mean"] - cand["post_mean"]).set_index(["id", "segment"])
    ids = out["id"].to_numpy(np.uint64)
    counts = cand.groupby("id").size()
    out["n_candidates"] = pd.Series(ids).map(counts).fillna(0).astype(int).to_numpy()
    out.loc[out["n_candidates"] > 0, "status"] = "unclear_polarity"
    hit = np.isin(ids, best.index.to_numpy(np.uint64))
    if hit.any():
        b = best.loc[ids[hit]]
        pre = side.loc[list(zip(ids[hit], b["a"].to_numpy(np.uint64)))]
        post = side.loc[list(zip(ids[hit], b["b"].to_numpy(np.uint64)))]
        score = b["partner_score"].to_numpy(float)
        ok = score >= params["min_partner_score"]
        rows = np.nonzero(hit)[0]
        out.loc[rows, "status"] = np.where(ok, "accepted", "low_score")
        out.loc[rows, "pre"] = np.where(ok, b["a"].to_numpy(np.uint64), np.uint64(0))
        out.loc[rows, "post"] = np.where(ok, b["b"].to_numpy(np.uint64), np.uint64(0))
        out.loc[rows, "interface"] = b["faces"].to_numpy(np.int64)
        out.loc[rows, "partner_score"] = score
        out.loc[rows, "score"] = score
        out.loc[rows, "polarity"] = (pre["d"].to_numpy() - post["d"].to_numpy()) / 2
        for key, frame, col in (("pre_prob", pre, "pre_mean"), ("post_prob", post, "post_mean"),
                                ("pre_contact", pre, "contact"), ("post_contact", post, "contact")):
            out.loc[rows, key] = frame[col].to_numpy(float)
        for name, frame in (("pre", pre), ("post", post)):
            for axis in "zyx":
                out.loc[rows, f"{name}_pt_{axis}"] = frame[f"pt_{axis}"].to_numpy(float)
    out["score"] = out["score"].fillna(0.0)
    return out


def train(x: np.ndarray, y: np.ndarray, hidden=(32, 16), steps: int = 3000, lr: float = 0.01,
          weight_decay: float = 1e-4, seed: int = 0) -> dict:
    """Fit the MLP (:func:`connectomix.mlp.fit`, float32) to pair features ``x`` (columns :data:`FEATURES`) and
    labels ``y`` (1 = the true pre, post pair); returns the JSON spec of :class:`PartnerModel`."""
    mlp, loss = fit_mlp(x, y, hidden, steps, lr, weight_decay, seed, dtype="float32")
    return {"features": FEATURES, "mean": mlp.mean.tolist(), "std": mlp.scale.tolist(),
            "layers": [{"W": w, "b": b} for w, b in mlp.layer_lists()], "loss": loss}
