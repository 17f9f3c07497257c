"""The partner classifier (``synapses.pairing: model``) on constructed cases: a bystander at the cleft's edge, a
two-sided contact whose maps decide the order, a cleft with no contact; and the shipped model's file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from connectomix import synapses as syn
from connectomix.synapses import partner_model as pm

VS = (40.0, 8.0, 8.0)


def hand_model(raw_weight: float = 0.0) -> pm.PartnerModel:
    """A linear scorer: the pair whose sides hold the cleft (its own voxels), share the cleft's main contact and
    differ in pre-minus-post near it, in that order (a stand-in for the trained weights, whose choices are
    benchmarked). ``raw_weight``: how much a brighter pre side (the dark postsynaptic density on the other)
    counts."""
    w = np.zeros((len(pm.FEATURES), 1))
    for name, weight in (("a_frac_b0", 2.0), ("b_frac_b0", 2.0), ("faces_frac", 8.0), ("md_diff_b1", 1.0),
                         ("md_diff_b2", 1.0), ("raw_diff_b1", raw_weight)):
        w[pm.FEATURES.index(name), 0] = weight
    n = len(pm.FEATURES)
    return pm.PartnerModel({"features": pm.FEATURES, "mean": [0.0] * n, "std": [1.0] * n,
                            "layers": [{"W": w.tolist(), "b": [-6.0]}]})


def volume(bystander=True, swap=False, one_side=False):
    """Segments 1 (y < 20) and 2 (y >= 20) meet at a membrane; the cleft covers both sides of it (as the phantom's
    do); 3, a small process, touches the cleft's end. Pre map high in 1 near the cleft, post map in 2 (``swap``:
    the other way round). ``one_side``: the cleft lies inside segment 1 only."""
    seg = np.ones((6, 40, 48), np.uint64)
    seg[:, 20:] = 2
    if bystander:
        seg[1:5, 16:24, 36:44] = 3
    clefts = np.zeros(seg.shape, np.uint64)
    clefts[2:4, 19:21, 12:38] = 7
    if one_side:
        clefts[:] = 0
        clefts[2:4, 10:12, 12:38] = 7
    y = np.arange(40)[None, :, None] * np.ones(seg.shape)
    near = np.exp(-np.abs(y - 19.5) / 6.0)
    pre = np.where(seg == 1, 0.8 * near, 0.3 * near)
    post = np.where(seg == 2, 0.8 * near, 0.3 * near)
    if bystander:  # the bystander's small shell looks strongly presynaptic (noisy means of small segments)
        pre[seg == 3], post[seg == 3] = 0.9, 0.1
    if swap:
        pre, post = post, pre
    cleft = (clefts > 0) * 0.95
    return clefts, seg, pre.astype(np.float32), post.astype(np.float32), cleft.astype(np.float32)


def assign(clefts, seg, pre, post, cleft, params=None, raw=None, model=None):
    params = syn.resolve({"pairing": "model", "partner_radius_nm": 160.0, **(params or {})})
    ids, counts = np.unique(clefts[clefts > 0], return_counts=True)
    where = np.argwhere(clefts > 0).mean(0) if len(ids) else np.zeros(3)
    table = pd.DataFrame({"id": ids.astype(np.uint64), "voxels": counts, "cleft_prob": 0.95, "size_nm2": 0.0,
                          "ctr_z": where[0], "ctr_y": where[1], "ctr_x": where[2]})
    full = tuple(slice(0, s) for s in seg.shape)
    pairs, _, faces = syn.partner_stats_block(clefts, seg, pre, post, full, (0, 0, 0), VS,
                                              {int(i): tuple(where) for i in ids}, params, cleft_read=cleft,
                                              raw_read=raw)
    return syn.assign(table, pairs, params, faces, VS, model or hand_model()).set_index("id"), pairs


def test_bystander_at_the_cleft_is_not_a_partner():
    out, pairs = assign(*volume())
    assert 3 in set(pairs["segment"].astype(int))  # the bystander is a candidate ...
    assert out.loc[7, "status"] == "accepted"  # ... but the pair holding the cleft wins
    assert (out.loc[7, "pre"], out.loc[7, "post"]) == (1, 2)
    assert out.loc[7, "n_candidates"] == 3 and out.loc[7, "interface"] > 0
    assert 0 < out.loc[7, "partner_score"] <= 1 and out.loc[7, "score"] == out.loc[7, "partner_score"]
    # the channel rules pick the bystander, whose means look most presynaptic
    rule = syn.assign_partners(out.reset_index()[["id", "voxels", "cleft_prob"]], pairs,
                               syn.resolve({"pairing": "candidates", "min_polarity": 0.0, "min_partner_prob": 0.0}))
    assert rule.set_index("id").loc[7, "pre"] == 3


def test_two_sided_contact_the_maps_decide_the_order():
    out, _ = assign(*volume(bystander=False))
    assert (out.loc[7, "pre"], out.loc[7, "post"]) == (1, 2)
    swapped, _ = assign(*volume(bystander=False, swap=True))
    assert (swapped.loc[7, "pre"], swapped.loc[7, "post"]) == (2, 1)
    assert swapped.loc[7, "partner_score"] == pytest.approx(out.loc[7, "partner_score"], rel=1e-6)
    strict, _ = assign(*volume(bystander=False), params={"min_partner_score": 0.999999})
    assert strict.loc[7, "status"] == "low_score" and strict.loc[7, "pre"] == 0


def test_no_contact_no_synapse():
    out, _ = assign(*volume(bystander=False, one_side=True))  # one candidate: no pair to judge
    assert out.loc[7, "status"] == "unclear_polarity" and out.loc[7, "pre"] == 0 and out.loc[7, "n_candidates"] == 1
    clefts, seg, pre, post, cleft = volume(bystander=False)
    out, _ = assign(clefts, np.zeros_like(seg), pre, post, cleft)  # no segment at all
    assert out.loc[7, "status"] == "no_segment"
    table = syn.synapse_table(out.reset_index(), VS, (0.0, 0.0, 0.0))
    assert len(table) == 0 and "partner_score" in table.columns


def test_shipped_model_loads_and_scores_in_range():
    spec = json.loads(pm.locate("models/synapse_partners.json").read_text())
    assert spec["features"] == pm.FEATURES and spec["trained_on"]["phantom_seeds"] == list(range(13, 21))
    model = pm.PartnerModel(spec)
    p = model.predict(np.asarray([spec["mean"], np.asarray(spec["mean"]) + np.asarray(spec["std"])]))
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="features"):
        pm.PartnerModel({**spec, "features": spec["features"][:-1]})


def test_one_cleft_over_two_contacts_gives_two_synapses():
    """Neighbouring synapses merged in the cleft channel: a cleft running over the contact of 1 and 2 and on over
    the contact of 3 and 2 is two synapses, 1 -> 2 and 3 -> 2, each at its own contact, with its own id."""
    clefts, seg, pre, post, cleft = volume(bystander=False)
    seg[:, :20, 24:] = 3
    pre = np.where(seg == 3, pre[:, :, :1].max(), pre).astype(np.float32)  # 3 looks presynaptic as 1 does
    clefts[2:4, 19:21, 4:44] = 7
    cleft = ((clefts > 0) * 0.95).astype(np.float32)
    out, _ = assign(clefts, seg, pre, post, cleft)
    rows = out.loc[[7]].sort_values("ctr_x")
    assert rows["status"].tolist() == ["accepted", "accepted"]
    assert list(zip(rows["pre"], rows["post"])) == [(1, 2), (3, 2)]
    assert rows["ctr_x"].iloc[0] < 24 <= rows["ctr_x"].iloc[1]  # each at its contact's centre
    assert rows["synapse_id"].nunique() == 2 and 7 in set(rows["synapse_id"].astype(int))
    table = syn.synapse_table(out.reset_index(), VS, (0.0, 0.0, 0.0))
    assert len(table) == 2 and table["id"].is_unique and set(table["cleft_id"].astype(int)) == {7}
    for _, r in table.iterrows():  # partner points lie in their segments
        for key, obj in (("pre_pt_position", r["pre_pt_root_id"]), ("post_pt_position", r["post_pt_root_id"])):
            x, y, z = r[key]
            assert seg[int(round(z / 40)), int(round(y / 8)), int(round(x / 8))] == obj
    # sites closer than min_site_distance_nm (here 160 nm apart) to a better synapse on the cleft are not their own
    near, _ = assign(clefts, seg, pre, post, cleft, params={"min_site_distance_nm": 200.0})
    assert len(near.loc[[7]]) == 1 and near.loc[7, "status"] == "accepted" and near.loc[7, "synapse_id"] == 7
    assert near.loc[7, "partner_score"] == rows["partner_score"].max()


def test_grey_values_decide_where_the_maps_do_not():
    """Maps alike on both sides; the image is dark on one side of the cleft (a postsynaptic density): a model that
    reads the grey values puts the post side there, whichever side it is."""
    clefts, seg, _, _, cleft = volume(bystander=False)
    flat = np.full(seg.shape, 0.5, np.float32)
    for dark, expected in ((2, (1, 2)), (1, (2, 1))):
        raw = np.full(seg.shape, 180, np.uint8)
        y = np.arange(seg.shape[1])[None, :, None]
        raw[(seg == dark) & (np.abs(y - 19.5) < 4) & np.ones(seg.shape, bool)] = 90
        out, pairs = assign(clefts, seg, flat, flat, cleft, raw=raw, model=hand_model(raw_weight=20.0))
        assert (out.loc[7, "pre"], out.loc[7, "post"]) == expected
        side = pairs.set_index("segment")
        assert side.loc[dark, "raw_b1"] / side.loc[dark, "n_b1"] < side.loc[3 - dark, "raw_b1"] / side.loc[3 - dark, "n_b1"]
