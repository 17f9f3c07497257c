"""Partners decided jointly (``pairing: model``): every ordered pair (pre candidate, post candidate) of a cleft is
described by features of the cleft, of both sides (map channels and grey values near the cleft) and of the pair
(:func:`pair_features`) and scored by a small classifier (an MLP stored as JSON, :class:`PartnerModel`).

A cleft can hold several synapses: where a thresholded cleft runs over the contacts of several pairs of segments
(neighbouring synapses onto one dendrite merge in the cleft channel), each contact of two candidates on it is a
*site* of its own, placed at the contact's centre; a cleft on no contact of two candidates is one site. Per site
the best-scoring ordered pair wins, and the site becomes a synapse when its score (the ``partner_score``, 0..1)
reaches ``min_partner_score`` (:func:`sites`, :func:`assign`). The classifier learns from phantom ground truth
(``benchmarks/synapse_partners.py --train``): a pair is positive when it is the true (pre, post) pair of a synapse
within the match tolerance of its site, so clefts and contacts matching no synapse teach it to reject, too."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from connectomix.mlp import MLP
from connectomix.mlp import fit as fit_mlp
from connectomix.synapses.clefts import cleft_voxel
from connectomix.synapses.partners import BANDS_NM, FACE_KEYS, assign_partners, empty_assignment

NB = len(BANDS_NM)
SIDE = (["pre_mean", "post_mean", "d", "d_rank", "contact_frac", "log_contact", "log_voxels", "dist"]
        + [f"{k}_b{i}" for i in range(NB) for k in ("mpre", "mpost", "mcleft", "md", "logn", "frac", "mraw", "sraw")]
        + [f"md_rank_b{i}" for i in range(NB)])
FEATURES = (["cleft_log_voxels", "cleft_prob", "n_candidates"] + [f"a_{f}" for f in SIDE] + [f"b_{f}" for f in SIDE]
            + ["log_faces", "faces_frac", "cos", "d_diff"] + [f"md_diff_b{i}" for i in range(NB)]
            + [f"raw_diff_b{i}" for i in range(NB)]
            + [f"c{s}_{k}" for s in "ab" for k in FACE_KEYS] + [f"c_{k}_diff" for k in FACE_KEYS])


def candidates(clefts, pairs, params: dict, voxel_size) -> pd.DataFrame:
    """Per (cleft, candidate segment with ``>= min_contact_voxels`` contact voxels): the side features of
    :data:`SIDE` (mean pre / post probability over its voxels near the cleft, their difference ``d`` and its rank
    among the cleft's candidates, share of the cleft's contact, log contact and shell voxels, distance of its
    point from the cleft centre in units of 100 nm; per distance band the means of the channels and of the grey
    value, the grey value's standard deviation) plus the point's offset from the centre (nm, ``oz oy ox``)."""
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
    band = {}
    group = cand["id"].to_numpy()
    for i in range(NB):
        n = cand[f"n_b{i}"].to_numpy(float)
        for k in ("pre", "post", "cleft", "raw"):
            band[f"m{k}_b{i}"] = np.where(n > 0, cand[f"{k}_b{i}"] / np.maximum(n, 1), 0.0)
        second = np.where(n > 0, cand[f"raw2_b{i}"] / np.maximum(n, 1), 0.0)
        band[f"sraw_b{i}"] = np.sqrt(np.maximum(second - band[f"mraw_b{i}"] ** 2, 0.0))
        band[f"md_b{i}"] = band[f"mpre_b{i}"] - band[f"mpost_b{i}"]
        band[f"logn_b{i}"] = np.log1p(n)
        total = pd.Series(n).groupby(group).transform("sum").to_numpy(float)
        band[f"frac_b{i}"] = np.where(total > 0, n / np.maximum(total, 1), 0.0)
        band[f"md_rank_b{i}"] = pd.Series(band[f"md_b{i}"]).groupby(group).rank(ascending=False,
                                                                                method="first").to_numpy() - 1
    cand = pd.concat([cand, pd.DataFrame(band, index=cand.index)], axis=1)
    ctr = clefts.set_index("id")[["ctr_z", "ctr_y", "ctr_x"]].reindex(cand["id"]).to_numpy(float)
    off = (cand[["pt_z", "pt_y", "pt_x"]].to_numpy(float) - ctr) * np.asarray(voxel_size, float)
    cand["oz"], cand["oy"], cand["ox"] = off.T
    cand["dist"] = np.linalg.norm(off, axis=1) / 100.0
    return cand


def pair_features(clefts, pairs, params: dict, voxel_size, interfaces=None) -> pd.DataFrame:
    """Every ordered pair (a = pre, b = post) of distinct candidates of a cleft with the :data:`FEATURES` columns
    (cleft: log voxels, mean cleft probability, candidates / 10; both sides; pair: log and relative interface
    faces shared on the cleft, cosine of the angle between the two sides' points seen from the cleft centre,
    ``d_a - d_b``, per band the differences of pre-minus-post and of the mean grey value; at the pair's contact,
    the mean pre / post channel and grey value on each side, ``FACE_DEPTH`` voxels deep, and their differences)
    and ``id, a, b``."""
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
    side_cols = [f"{k}_{s}" for s in "ab" for k in ("n", *FACE_KEYS)]
    contact = pd.DataFrame(0.0, index=out.index, columns=side_cols)
    if interfaces is not None and len(interfaces) and len(out):
        lo = np.minimum(out["a"].to_numpy(np.uint64), out["b"].to_numpy(np.uint64))
        hi = np.maximum(out["a"].to_numpy(np.uint64), out["b"].to_numpy(np.uint64))
        key = pd.MultiIndex.from_arrays([out["id"].to_numpy(np.uint64), lo, hi])
        table = interfaces.astype({"id": np.uint64, "segment_a": np.uint64, "segment_b": np.uint64})
        table = table.set_index(["id", "segment_a", "segment_b"])
        faces = table["faces"].reindex(key).fillna(0).to_numpy(float)
        cols = [c for c in side_cols if c in table.columns]
        contact[cols] = table[cols].reindex(key).fillna(0).to_numpy(float)
        # the table's sides are the lower and higher segment ids; here: a (pre) and b (post)
        flip = out["a"].to_numpy(np.uint64) != lo
        for k in ("n", *FACE_KEYS):
            ka, kb = contact[f"{k}_a"].to_numpy(copy=True), contact[f"{k}_b"].to_numpy(copy=True)
            contact[f"{k}_a"], contact[f"{k}_b"] = np.where(flip, kb, ka), np.where(flip, ka, kb)
    out["log_faces"] = np.log1p(faces)
    contact_features = {}
    for s in "ab":
        n = contact[f"n_{s}"].to_numpy(float)
        for k in FACE_KEYS:
            contact_features[f"c{s}_{k}"] = np.where(n > 0, contact[f"{k}_{s}"].to_numpy(float) / np.maximum(n, 1),
                                                     0.0)
    for k in FACE_KEYS:
        contact_features[f"c_{k}_diff"] = contact_features[f"ca_{k}"] - contact_features[f"cb_{k}"]
    out = pd.concat([out, pd.DataFrame(contact_features, index=out.index)], axis=1)
    top = pd.Series(faces).groupby(out["id"].to_numpy()).transform("max").to_numpy()
    out["faces_frac"] = np.where(top > 0, faces / np.maximum(top, 1), 0.0)
    va = out[["a_oz", "a_oy", "a_ox"]].to_numpy(float)
    vb = out[["b_oz", "b_oy", "b_ox"]].to_numpy(float)
    norm = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    out["cos"] = np.where(norm > 0, (va * vb).sum(1) / np.maximum(norm, 1e-9), 0.0)
    out["d_diff"] = out["a_d"] - out["b_d"]
    for i in range(NB):
        out[f"md_diff_b{i}"] = out[f"a_md_b{i}"] - out[f"b_md_b{i}"]
        out[f"raw_diff_b{i}"] = out[f"a_mraw_b{i}"] - out[f"b_mraw_b{i}"]
    return out[["id", "a", "b", *FEATURES]].copy()


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


SITE_COLUMNS = ["id", "a", "b", "partner_score", "faces", "site_z", "site_y", "site_x", "first_a", "first_b"]


def site_pairs(clefts, pairs, params: dict, voxel_size, interfaces=None) -> pd.DataFrame:
    """The ordered pairs of :func:`pair_features` that belong to a site (module docstring), with the site's key
    ``segment_a, segment_b`` (the contact's two segments, 0 and 0 for a whole-cleft site), centre ``site_z, site_y,
    site_x`` (global voxels: the contact's centre, else the cleft's), ``faces`` (0 for a whole cleft) and the
    lowest contact voxel of ``a`` and of ``b`` (``first_a``, ``first_b``: :func:`~connectomix.synapses.clefts.cleft_id`;
    0 for a whole cleft)."""
    feats = pair_features(clefts, pairs, params, voxel_size, interfaces)
    lo = np.minimum(feats["a"].to_numpy(np.uint64), feats["b"].to_numpy(np.uint64))
    hi = np.maximum(feats["a"].to_numpy(np.uint64), feats["b"].to_numpy(np.uint64))
    feats = feats.assign(segment_a=lo, segment_b=hi)
    contact = ["faces", "sum_z", "sum_y", "sum_x", "first_a", "first_b"]
    if interfaces is not None and len(interfaces) and len(feats):
        table = interfaces.astype({"id": np.uint64, "segment_a": np.uint64, "segment_b": np.uint64})
        table = table[["id", "segment_a", "segment_b", *contact]].rename(columns={"first_a": "first_lo",
                                                                                    "first_b": "first_hi"})
        feats = feats.merge(table, on=["id", "segment_a", "segment_b"], how="left")
    else:
        feats = feats.assign(**{c: 0 for c in contact}).rename(columns={"first_a": "first_lo", "first_b": "first_hi"})
    feats[["faces", "sum_z", "sum_y", "sum_x"]] = feats[["faces", "sum_z", "sum_y", "sum_x"]].fillna(0.0)
    faces = feats["faces"].to_numpy(float)
    on_contact = faces > 0
    with_contact = feats.loc[on_contact, "id"].unique()
    # a cleft on a contact of two candidates: one site per contact; else the whole cleft is one site
    keep = on_contact | ~feats["id"].isin(with_contact).to_numpy()
    feats, faces, on_contact = feats[keep].reset_index(drop=True), faces[keep], on_contact[keep]
    feats.loc[~on_contact, ["segment_a", "segment_b"]] = 0
    centre = clefts.set_index("id")[["ctr_z", "ctr_y", "ctr_x"]].reindex(feats["id"].to_numpy(np.uint64))
    site = {f"site_{axis}": np.where(on_contact, feats[f"sum_{axis}"].to_numpy(float) / np.maximum(faces, 1),
                                     centre[f"ctr_{axis}"].to_numpy(float)) for axis in "zyx"}
    first_lo = feats["first_lo"].fillna(0).to_numpy(float).astype(np.uint64)
    first_hi = feats["first_hi"].fillna(0).to_numpy(float).astype(np.uint64)
    a_is_lo = feats["a"].to_numpy(np.uint64) == feats["segment_a"].to_numpy(np.uint64)
    extra = pd.DataFrame({**site, "first_a": np.where(a_is_lo, first_lo, first_hi),
                          "first_b": np.where(a_is_lo, first_hi, first_lo)}, index=feats.index)
    feats = feats.drop(columns=["sum_z", "sum_y", "sum_x", "first_lo", "first_hi"])
    feats["faces"] = faces.astype(np.int64)
    return pd.concat([feats, extra], axis=1)


SITE_COLUMNS = ["id", "a", "b", "partner_score", "faces", "site_z", "site_y", "site_x", "first_a", "first_b"]


def sites(clefts, pairs, params: dict, voxel_size, interfaces=None, model: PartnerModel | None = None):
    """Scored synapse sites (module docstring): DataFrame :data:`SITE_COLUMNS`, one row per site with its
    best-scoring ordered pair (columns as in :func:`site_pairs`). Clefts with fewer than two candidates have no
    site."""
    model = model or PartnerModel.load(params["partner_model"])
    feats = site_pairs(clefts, pairs, params, voxel_size, interfaces)
    feats["partner_score"] = model.predict(feats[FEATURES].to_numpy(float)) if len(feats) else np.zeros(0)
    best = (feats.sort_values(["id", "segment_a", "segment_b", "partner_score", "a", "b"],
                              ascending=[True, True, True, False, True, True])
            .drop_duplicates(["id", "segment_a", "segment_b"]).reset_index(drop=True))
    return best[SITE_COLUMNS]


def assign(clefts, pairs, params: dict, interfaces=None, voxel_size=(1.0, 1.0, 1.0), model=None):
    """The partner assignment of ``params['pairing']``: the classifier for ``model`` (``model``: a loaded
    :class:`PartnerModel`, else ``params['partner_model']``; ``voxel_size`` in nm), else the rules of
    :func:`~connectomix.synapses.partners.assign_partners`; columns as there, plus ``synapse_id``."""
    if params["pairing"] != "model":
        out = assign_partners(clefts, pairs, params, interfaces)
        out["synapse_id"] = np.where(out["status"] == "accepted", out["id"].to_numpy(np.uint64), np.uint64(0))
        return out
    out = empty_assignment(clefts)
    out["synapse_id"] = np.zeros(len(out), np.uint64)
    if len(out) == 0 or pairs is None or len(pairs) == 0:
        return out
    return _assign_by_model(out, pairs, params, interfaces, voxel_size, model)


def _assign_by_model(out, pairs, params, interfaces, voxel_size, model):
    """``pairing: model``: the sites of each cleft (:func:`sites`); a site whose score reaches
    ``min_partner_score`` is a synapse (``accepted``; one row per synapse, so a cleft holding several has several
    rows); a cleft with none keeps one row, its best site (``low_score``), or ``unclear_polarity`` (one candidate)
    or ``no_segment``. A cleft's best synapse takes the cleft's id as ``synapse_id``; the others take the id of
    their contact's lowest voxel on the post side (else on the pre side; a site whose both ids are taken joins
    the synapse that holds them: ``merged``). ``ctr_*``: the site's centre; partner points: the contact's lowest
    voxel in each partner (whole-cleft sites: the partner's contact voxel nearest the cleft's centre);
    ``score`` = ``partner_score``; ``polarity`` = half the pair's pre-minus-post difference."""
    cand = pairs[pairs["contact"] >= params["min_contact_voxels"]].copy()
    cand["pre_mean"] = cand["sum_pre"] / cand["voxels"]
    cand["post_mean"] = cand["sum_post"] / cand["voxels"]
    ids = out["id"].to_numpy(np.uint64)
    counts = cand.groupby("id").size()
    out["n_candidates"] = pd.Series(ids).map(counts).fillna(0).astype(int).to_numpy()
    out.loc[out["n_candidates"] > 0, "status"] = "unclear_polarity"
    found = sites(out, pairs, params, voxel_size, interfaces, model)
    found = found[np.isin(found["id"].to_numpy(np.uint64), ids)]
    found["ok"] = found["partner_score"] >= params["min_partner_score"]
    found["ok"] &= ~suppressed(found, params["min_site_distance_nm"], voxel_size)
    any_ok = found.groupby("id")["ok"].transform("any")
    # the synapses, and each cleft's best site where none is one
    best_rejected = (found[~any_ok].sort_values(["id", "partner_score"], ascending=[True, False])
                     .drop_duplicates("id"))
    keep = pd.concat([found[found["ok"]], best_rejected]).sort_values(
        ["id", "partner_score", "a", "b"], ascending=[True, False, True, True]).reset_index(drop=True)
    if keep.empty:
        out["score"] = out["score"].fillna(0.0)
        return out
    row_of = {int(c): i for i, c in enumerate(ids.tolist())}
    rows = out.iloc[[row_of[int(c)] for c in keep["id"]]].reset_index(drop=True)
    side = cand.assign(d=cand["pre_mean"] - cand["post_mean"]).set_index(["id", "segment"])
    pre = side.loc[list(zip(keep["id"].to_numpy(np.uint64), keep["a"].to_numpy(np.uint64)))]
    post = side.loc[list(zip(keep["id"].to_numpy(np.uint64), keep["b"].to_numpy(np.uint64)))]
    ok = keep["ok"].to_numpy(bool)
    rows["status"] = np.where(ok, "accepted", "low_score")
    rows["synapse_id"] = _synapse_ids(keep, ids)
    rows.loc[ok & (rows["synapse_id"].to_numpy(np.uint64) == 0), "status"] = "merged"
    acc = rows["status"].to_numpy() == "accepted"
    rows["pre"] = np.where(acc, keep["a"].to_numpy(np.uint64), np.uint64(0))
    rows["post"] = np.where(acc, keep["b"].to_numpy(np.uint64), np.uint64(0))
    rows["interface"] = keep["faces"].to_numpy(np.int64)
    rows["partner_score"] = rows["score"] = keep["partner_score"].to_numpy(float)
    rows["polarity"] = (pre["d"].to_numpy() - post["d"].to_numpy()) / 2
    for key, frame, col in (("pre_prob", pre, "pre_mean"), ("post_prob", post, "post_mean"),
                            ("pre_contact", pre, "contact"), ("post_contact", post, "contact")):
        rows[key] = frame[col].to_numpy(float)
    on_contact = keep["faces"].to_numpy() > 0
    for name, frame, first in (("pre", pre, "first_a"), ("post", post, "first_b")):
        points = frame[["pt_z", "pt_y", "pt_x"]].to_numpy(float, copy=True)
        points[on_contact] = cleft_voxel(keep[first].to_numpy(np.uint64)[on_contact])
        for k, axis in enumerate("zyx"):
            rows[f"{name}_pt_{axis}"] = points[:, k]
    for k, axis in enumerate("zyx"):
        site = keep[f"site_{axis}"].to_numpy(float)
        if f"ctr_{axis}_nm" in rows:  # the same offset, the site's centre
            rows[f"ctr_{axis}_nm"] += (site - rows[f"ctr_{axis}"].to_numpy(float)) * voxel_size[k]
        rows[f"ctr_{axis}"] = site
    rest = out[~np.isin(ids, keep["id"].to_numpy(np.uint64))]
    out = pd.concat([rows, rest], ignore_index=True).sort_values(["id", "synapse_id"]).reset_index(drop=True)
    out["score"] = out["score"].fillna(0.0)
    return out


def suppressed(found, distance_nm: float, voxel_size) -> np.ndarray:
    """Sites (rows of :func:`sites` with ``ok``) within ``distance_nm`` of a better-scoring ``ok`` site of the same
    cleft (greedy, best first)."""
    out = np.zeros(len(found), bool)
    if distance_nm <= 0 or not len(found):
        return out
    pos = found[["site_z", "site_y", "site_x"]].to_numpy(float) * np.asarray(voxel_size, float)
    order = np.lexsort((-found["partner_score"].to_numpy(float), found["id"].to_numpy(np.uint64)))
    ids, ok = found["id"].to_numpy(np.uint64), found["ok"].to_numpy(bool)
    kept: dict = {}
    for i in order:
        if not ok[i]:
            continue
        near = [q for q in kept.get(int(ids[i]), []) if np.linalg.norm(pos[i] - q) < distance_nm]
        if near:
            out[i] = True
        else:
            kept.setdefault(int(ids[i]), []).append(pos[i])
    return out


def _synapse_ids(keep, cleft_ids) -> np.ndarray:
    """Ids of the accepted sites (``keep`` sorted by cleft, best first): a cleft's best takes the cleft id, the
    others the lowest contact voxel of the post side, else of the pre side; 0 where both are taken (and for
    rejected sites)."""
    taken = set(int(c) for c in cleft_ids.tolist())
    out = np.zeros(len(keep), np.uint64)
    first_of_cleft = ~keep["id"].duplicated().to_numpy()
    for i, (cid, ok, fa, fb, first) in enumerate(zip(keep["id"], keep["ok"], keep["first_a"], keep["first_b"],
                                                     first_of_cleft)):
        if not ok:
            continue
        if first:
            out[i] = np.uint64(cid)
            continue
        for candidate in (int(fb), int(fa)):
            if candidate and candidate not in taken:
                taken.add(candidate)
                out[i] = np.uint64(candidate)
                break
    return out


def train(x: np.ndarray, y: np.ndarray, hidden=(32, 16), steps: int = 3000, lr: float = 0.01,
          weight_decay: float = 1e-4, seed: int = 0) -> dict:
    """Fit the MLP (:func:`connectomix.mlp.fit`, float32) to pair features ``x`` (columns :data:`FEATURES`) and
    labels ``y`` (1 = the true pre, post pair); returns the JSON spec of :class:`PartnerModel`."""
    mlp, loss = fit_mlp(x, y, hidden, steps, lr, weight_decay, seed, dtype="float32")
    return {"features": FEATURES, "mean": mlp.mean.tolist(), "std": mlp.scale.tolist(),
            "layers": [{"W": w, "b": b} for w, b in mlp.layer_lists()], "loss": loss}
