"""Partners of the clefts: per block, the segments near each cleft and the contacts between segments on it
(:func:`partner_stats_block`, :func:`interface_faces`), their sums over blocks, the choice of a pre and a post
segment per cleft (:func:`assign_partners`, rules in the package docstring) and the CAVE-style synapse table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from connectomix.synapses.clefts import cleft_id, probability


# --- partner statistics (per block of the finish pass) -------------------------------------------------------------


BANDS_NM = (0.0, 40.0, 80.0, 160.0)  # distance bands from the cleft: its own voxels, then up to each edge (nm)
BAND_KEYS = ("pre", "post", "cleft", "raw", "raw2")  # per band: summed probabilities, grey value (0..1) and its square
BAND_COLUMNS = [f"{k}_b{i}" for i in range(len(BANDS_NM)) for k in ("n", *BAND_KEYS)]
PAIR_COLUMNS = ["id", "segment", "voxels", "sum_pre", "sum_post", "contact", "pt_dist", "pt_z", "pt_y", "pt_x",
                *BAND_COLUMNS]
SUM_COLUMNS = ["voxels", "sum_pre", "sum_post", "contact", *BAND_COLUMNS]


def partner_stats_block(clefts_read, seg_read, pre_read, post_read, write_in_read, read_offset, voxel_size,
                        centres: dict, params: dict, volume_end=None, cleft_read=None, raw_read=None):
    """Per (cleft, segment) sums over one block's write ROI; arrays hold the read ROI (halo >= partner radius).

    Every voxel of a segment within ``partner_radius_nm`` of a cleft (Euclidean, nm) counts for its nearest cleft.
    Returns ``(pairs, area, interfaces)``: pairs with :data:`PAIR_COLUMNS` (``contact`` = voxels within
    ``contact_nm``; ``pt_*`` = the candidate point, global voxels, of the contact voxel nearest to the cleft centre,
    or of any shell voxel when none is in contact; ``pt_dist`` its distance in nm, +1e9 when not in contact;
    per distance band ``i`` of :data:`BANDS_NM` (band 0: the cleft's own voxels, band i: up to ``BANDS_NM[i]``):
    ``n_bi`` voxels and summed ``pre_bi``, ``post_bi``, ``cleft_bi`` probabilities (cleft: ``cleft_read``, the
    cleft channel, else 0) and grey values ``raw_bi`` and their squares ``raw2_bi`` (``raw_read``, the image the
    maps were predicted from, uint8 scaled to 0..1, else 0: the dark postsynaptic density and vesicle texture)); area:
    DataFrame ``id, area_nm2_x2`` (exposed cleft surface, nm^2, summed over this block's cleft voxels); interfaces:
    :func:`interface_faces` of the block.
    """
    voxel_size = np.asarray(voxel_size, float)
    empty = pd.DataFrame({c: np.zeros(0, np.uint64 if c in ("id", "segment") else np.float64) for c in PAIR_COLUMNS})
    mask = clefts_read > 0
    if not mask.any():
        return empty, pd.DataFrame({"id": np.zeros(0, np.uint64), "area_nm2_x2": np.zeros(0)}), _no_interfaces()
    dist_read, idx = ndimage.distance_transform_edt(~mask, sampling=voxel_size, return_indices=True)
    nearest_read = clefts_read[tuple(idx)]
    interfaces = interface_faces(seg_read, nearest_read, dist_read <= params["interface_nm"], write_in_read,
                                 read_offset, {k: v for k, v in (("pre", pre_read), ("post", post_read),
                                                                 ("raw", raw_read)) if v is not None})
    nearest = nearest_read[write_in_read]
    dist = dist_read[write_in_read]
    seg = seg_read[write_in_read]
    sel = (dist <= params["partner_radius_nm"]) & (seg > 0) & (nearest > 0)
    pairs = empty
    if sel.any():
        where = np.nonzero(sel)
        w0 = [s.start for s in write_in_read]
        g = [where[a] + w0[a] + read_offset[a] for a in range(3)]  # global voxel coordinates
        cid = nearest[sel].astype(np.uint64)
        d = dist[sel]
        contact = d <= params["contact_nm"]
        ctr = np.array([centres[int(c)] for c in np.unique(cid)])
        ctr_of = ctr[np.searchsorted(np.unique(cid), cid)]
        dc = np.sqrt(sum(((g[a] - ctr_of[:, a]) * voxel_size[a]) ** 2 for a in range(3)))
        df = pd.DataFrame({
            "id": cid, "segment": seg[sel].astype(np.uint64),
            "pre": probability(pre_read[write_in_read][sel]), "post": probability(post_read[write_in_read][sel]),
            "contact": contact.astype(np.int64), "pt_dist": np.where(contact, dc, dc + 1e9),
            "pt_z": g[0], "pt_y": g[1], "pt_x": g[2],
            "cleft": probability(cleft_read[write_in_read][sel]) if cleft_read is not None else np.zeros(len(d)),
            "raw": probability(raw_read[write_in_read][sel]) if raw_read is not None else np.zeros(len(d)),
        })
        df["raw2"] = df["raw"] ** 2
        band = np.searchsorted(np.asarray(BANDS_NM), d, side="left")  # 0 on the cleft, i up to BANDS_NM[i]
        for i in range(len(BANDS_NM)):
            inb = band == i
            df[f"n_b{i}"] = inb.astype(np.int64)
            for k in BAND_KEYS:
                df[f"{k}_b{i}"] = np.where(inb, df[k], 0.0)
        sums = df.groupby(["id", "segment"], sort=True).agg(
            voxels=("pre", "size"), sum_pre=("pre", "sum"), sum_post=("post", "sum"), contact=("contact", "sum"),
            **{c: (c, "sum") for c in BAND_COLUMNS})
        best = df.sort_values("pt_dist", kind="stable").drop_duplicates(["id", "segment"]).set_index(["id", "segment"])
        pairs = sums.join(best[["pt_dist", "pt_z", "pt_y", "pt_x"]]).reset_index()[PAIR_COLUMNS]
    # Exposed surface: faces between a cleft voxel of the write ROI and a voxel with another label. The volume's
    # outer faces do not count (edge padding repeats the label there).
    padded = np.pad(clefts_read, 1, mode="edge")
    inner = tuple(slice(s.start + 1, s.stop + 1) for s in write_in_read)
    centre = padded[inner]
    lab = []
    wts = []
    for axis in range(3):
        face = float(np.prod([voxel_size[a] for a in range(3) if a != axis]))
        for step in (-1, 1):
            sh = list(inner)
            sh[axis] = slice(inner[axis].start + step, inner[axis].stop + step)
            exposed = (centre > 0) & (padded[tuple(sh)] != centre)
            lab.append(centre[exposed])
            wts.append(np.full(int(exposed.sum()), face))
    lab = np.concatenate(lab)
    area = (pd.DataFrame({"id": lab.astype(np.uint64), "area_nm2_x2": np.concatenate(wts)})
            .groupby("id", sort=True)["area_nm2_x2"].sum().reset_index())
    return pairs, area, interfaces


FACE_KEYS = ("pre", "post", "raw")  # values read on both sides of a contact, FACE_DEPTH voxels deep
FACE_DEPTH = 3
INTERFACE_COLUMNS = ["id", "segment_a", "segment_b", "faces", "sum_z", "sum_y", "sum_x", "first_a", "first_b",
                     *[f"{k}_{side}" for side in "ab" for k in ("n", *FACE_KEYS)]]


def interface_faces(seg_read, nearest_read, near_read, write_in_read, read_offset=(0, 0, 0), values=None):
    """Contacts between segments on each cleft: per (cleft, segment a < segment b), the voxel faces between a voxel
    of a and a voxel of b (6-neighbours) that are both ``near`` (within ``interface_nm``) the same cleft.

    Columns :data:`INTERFACE_COLUMNS`: ``faces`` (count), ``sum_z, sum_y, sum_x`` (summed face centres, global
    voxels: their mean is the contact's centre), ``first_a``, ``first_b`` (the smallest
    :func:`~connectomix.synapses.clefts.cleft_id` of the contact's voxels in segment a and in segment b: its lowest
    voxel on each side) and, per side, the voxels ``n_a`` / ``n_b`` up to :data:`FACE_DEPTH` deep from each face
    along its normal (within the side's segment and the read ROI) with the sums of ``values`` (``{key: read-ROI
    array}`` for the keys of :data:`FACE_KEYS`, uint8 scaled to 0..1; absent keys sum to 0) over them: what lies
    right at the contact on each side (postsynaptic density, vesicles). ``nearest_read`` holds each read-ROI
    voxel's nearest cleft id (0: none); ``read_offset`` is the read ROI's global offset. A face belongs to the block
    that owns its lower voxel (write ROI); its upper voxel may lie in the halo, so sums (and minima) over blocks
    equal the whole volume's where the halo is at least ``FACE_DEPTH`` voxels.
    """
    values = {k: probability(v) for k, v in (values or {}).items()}
    parts = []
    for axis in range(3):
        w = write_in_read[axis]
        stop = min(w.stop + 1, seg_read.shape[axis])  # one plane into the halo, where there is one
        lower, upper = list(write_in_read), list(write_in_read)
        lower[axis], upper[axis] = slice(w.start, stop - 1), slice(w.start + 1, stop)
        lower, upper = tuple(lower), tuple(upper)
        a, b = seg_read[lower], seg_read[upper]
        cleft = nearest_read[lower]
        ok = (a > 0) & (b > 0) & (a != b) & (cleft > 0) & (cleft == nearest_read[upper]) & near_read[lower] & \
            near_read[upper]
        idx = np.nonzero(ok)
        local = [idx[k] + lower[k].start for k in range(3)]  # read-ROI voxels of the lower side
        low = [local[k] + read_offset[k] for k in range(3)]  # global voxels of the lower side
        up = [c + (k == axis) for k, c in enumerate(low)]
        a, b = a[ok].astype(np.uint64), b[ok].astype(np.uint64)
        id_low, id_up = cleft_id(low), cleft_id(up)
        a_first = a < b  # the lower voxel is in segment_a
        frame = {"id": cleft[ok].astype(np.uint64), "segment_a": np.minimum(a, b), "segment_b": np.maximum(a, b),
                 "z": low[0] + 0.5 * (axis == 0), "y": low[1] + 0.5 * (axis == 1), "x": low[2] + 0.5 * (axis == 2),
                 "first_a": np.where(a_first, id_low, id_up), "first_b": np.where(a_first, id_up, id_low)}
        # each side, FACE_DEPTH voxels deep along the normal (down from the lower voxel, up from the upper one)
        sides = {}
        for name, segment, start, step in (("low", a, local[axis], -1), ("up", b, local[axis] + 1, 1)):
            n = np.zeros(len(segment))
            sums = {k: np.zeros(len(segment)) for k in FACE_KEYS}
            for depth in range(FACE_DEPTH):
                pos = start + step * depth
                inside = (pos >= 0) & (pos < seg_read.shape[axis])
                at = [c.copy() for c in local]
                at[axis] = np.clip(pos, 0, seg_read.shape[axis] - 1)
                at = tuple(at)
                same = inside & (seg_read[at] == segment)
                n += same
                for k in FACE_KEYS:
                    if k in values:
                        sums[k] += np.where(same, values[k][at], 0.0)
            sides[name] = (n, sums)
        for side, pick in (("a", a_first), ("b", ~a_first)):
            n = np.where(pick, sides["low"][0], sides["up"][0])
            frame[f"n_{side}"] = n
            for k in FACE_KEYS:
                frame[f"{k}_{side}"] = np.where(pick, sides["low"][1][k], sides["up"][1][k])
        parts.append(pd.DataFrame(frame))
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        return _no_interfaces()
    sums = {c: (c, "sum") for c in INTERFACE_COLUMNS[9:]}
    return df.groupby(["id", "segment_a", "segment_b"], sort=True).agg(
        faces=("z", "size"), sum_z=("z", "sum"), sum_y=("y", "sum"), sum_x=("x", "sum"), first_a=("first_a", "min"),
        first_b=("first_b", "min"), **sums).reset_index()[INTERFACE_COLUMNS]


def _no_interfaces():
    ids = ("id", "segment_a", "segment_b", "first_a", "first_b")
    return pd.DataFrame({c: np.zeros(0, np.uint64 if c in ids else np.int64 if c == "faces" else np.float64)
                         for c in INTERFACE_COLUMNS})


def combine_interfaces(parts):
    """Sum (counts, centres, side values) and take the minima (``first_a``, ``first_b``) of per-block
    :func:`interface_faces`."""
    df = pd.concat(parts, ignore_index=True)
    agg = {c: (c, "min" if c.startswith("first_") else "sum") for c in INTERFACE_COLUMNS[3:]}
    return df.groupby(["id", "segment_a", "segment_b"], sort=True).agg(**agg).reset_index()[INTERFACE_COLUMNS]


def combine_pairs(parts):
    """Sum per-block pair statistics; keep the candidate point nearest the cleft centre."""
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        return df
    sums = df.groupby(["id", "segment"], sort=True)[[c for c in SUM_COLUMNS if c in df.columns]].sum()
    best = df.sort_values(["pt_dist", "pt_z", "pt_y", "pt_x"], kind="stable").drop_duplicates(["id", "segment"])
    best = best.set_index(["id", "segment"])[["pt_z", "pt_y", "pt_x"]]
    return sums.join(best).reset_index()


# --- partner assignment ------------------------------------------------------------------------------------------


def empty_assignment(clefts):
    """``clefts`` with the columns of :func:`assign_partners`, every cleft ``no_segment``."""
    out = clefts.copy().reset_index(drop=True)
    n = len(out)
    for col, dtype in (("pre", np.uint64), ("post", np.uint64)):
        out[col] = np.zeros(n, dtype)
    for col in ("pre_prob", "post_prob", "polarity", "score", "pre_contact", "post_contact", "pre_pt_z", "pre_pt_y",
                "pre_pt_x", "post_pt_z", "post_pt_y", "post_pt_x", "partner_score"):
        out[col] = np.nan
    out["n_candidates"] = 0
    out["interface"] = 0
    out["status"] = "no_segment"
    return out


def assign_partners(clefts, pairs, params: dict, interfaces=None):
    """Pick one pre and one post segment per cleft, or a rejection reason (see the package docstring).

    ``clefts``: one row per cleft (``id``, ``cleft_prob``, ...); ``pairs``: combined pair statistics;
    ``interfaces``: combined :func:`interface_faces` (used with ``pairing: interface``). Returns ``clefts`` with
    ``status``, ``pre``, ``post`` (0 when rejected), ``pre_prob``, ``post_prob`` (means over the partner's shell
    voxels), ``polarity`` (the smaller partner margin), ``score``, ``pre_contact``, ``post_contact``,
    ``interface`` (faces shared by the chosen pair on the cleft; 0 when the pair did not come from an interface)
    and the partner points ``pre_pt_z..``, ``post_pt_z..`` (voxels), ``partner_score`` (= ``score``; the
    classifier's score with ``pairing: model``, :func:`connectomix.synapses.partner_model.assign`).
    """
    out = empty_assignment(clefts)
    n = len(out)
    if n == 0 or pairs is None or len(pairs) == 0:
        return out
    cand = pairs[pairs["contact"] >= params["min_contact_voxels"]].copy()
    cand["pre_mean"] = cand["sum_pre"] / cand["voxels"]
    cand["post_mean"] = cand["sum_post"] / cand["voxels"]
    if params["pairing"] == "model":
        raise ValueError("pairing: model is assigned by connectomix.synapses.partner_model.assign")
    contact_pair = {}
    if params["pairing"] == "interface" and interfaces is not None and len(interfaces):
        contact_pair = _largest_interfaces(interfaces, cand)
    row = {cid: i for i, cid in enumerate(out["id"].to_numpy(np.uint64).tolist())}
    cols = {c: out[c].to_numpy(copy=True) for c in out.columns if c not in ("id", "cleft_prob")}
    cols["status"] = cols["status"].astype(object)
    for cid, group in cand.groupby("id", sort=False):
        i = row.get(int(cid))
        if i is None:
            continue
        cols["n_candidates"][i] = len(group)
        if int(cid) in contact_pair:  # the two sides of the contact the cleft lies on; polarity only orders them
            a, b, faces = contact_pair[int(cid)]
            group = group[group["segment"].isin([a, b])]
            cols["interface"][i] = faces
        if params["polarity"] == "relative" and len(group) > 1:
            # the sides compared with each other: pre = the most pre-minus-post candidate, post = the least of the rest
            side = group.assign(d=group["pre_mean"] - group["post_mean"])
            ranked = side.sort_values(["d", "contact", "segment"], ascending=[False, False, True])
            by_pre = ranked.iloc[0]
            by_post = ranked.iloc[1:].sort_values(["d", "contact", "segment"], ascending=[True, False, True]).iloc[0]
            pol_pre = pol_post = (by_pre["d"] - by_post["d"]) / 2
        else:
            # Highest mean first; ties broken by contact, then by the smaller segment id (deterministic).
            by_pre = group.sort_values(["pre_mean", "contact", "segment"], ascending=[False, False, True]).iloc[0]
            by_post = group.sort_values(["post_mean", "contact", "segment"], ascending=[False, False, True]).iloc[0]
            pol_pre = by_pre["pre_mean"] - by_pre["post_mean"]
            pol_post = by_post["post_mean"] - by_post["pre_mean"]
        strong = by_pre["pre_mean"] >= params["min_partner_prob"] and by_post["post_mean"] >= params["min_partner_prob"]
        if by_pre["segment"] == by_post["segment"]:
            # One object carries both signals: an autapse (or a merge) when no other candidate has a signal.
            others = group[group["segment"] != by_pre["segment"]]
            other = max(others["pre_mean"].max(), others["post_mean"].max()) if len(others) else 0.0
            status = "autapse" if strong and other < params["min_partner_prob"] else "unclear_polarity"
        elif not strong or min(pol_pre, pol_post) < params["min_polarity"]:
            status = "unclear_polarity"
        else:
            status = "accepted"
        cols["status"][i] = status
        for key, value in (("pre_prob", by_pre["pre_mean"]), ("post_prob", by_post["post_mean"]),
                           ("polarity", min(pol_pre, pol_post)), ("pre_contact", by_pre["contact"]),
                           ("post_contact", by_post["contact"])):
            cols[key][i] = value
        for side, r in (("pre", by_pre), ("post", by_post)):
            for axis in "zyx":
                cols[f"{side}_pt_{axis}"][i] = r[f"pt_{axis}"]
        if status == "accepted":
            cols["pre"][i] = np.uint64(by_pre["segment"])
            cols["post"][i] = np.uint64(by_post["segment"])
    for key, values in cols.items():
        out[key] = values
    out["score"] = out["cleft_prob"] * out["polarity"].clip(0, 1).fillna(0)
    out["partner_score"] = out["score"]
    return out


def _largest_interfaces(interfaces, cand) -> dict:
    """Per cleft, the pair of candidates sharing the most interface faces on it: {cleft: (a, b, faces)}; ties go
    to the lower segment ids."""
    keys = cand[["id", "segment"]].astype(np.uint64)
    both = (interfaces.astype({"id": np.uint64, "segment_a": np.uint64, "segment_b": np.uint64})
            .merge(keys.rename(columns={"segment": "segment_a"}), on=["id", "segment_a"])
            .merge(keys.rename(columns={"segment": "segment_b"}), on=["id", "segment_b"]))
    best = (both.sort_values(["id", "faces", "segment_a", "segment_b"], ascending=[True, False, True, True])
            .drop_duplicates("id"))
    return {int(c): (np.uint64(a), np.uint64(b), int(f))
            for c, a, b, f in zip(best["id"], best["segment_a"], best["segment_b"], best["faces"])}


def synapse_table(assigned, voxel_size, offset_nm):
    """The CAVE-style ``synapses.parquet`` rows (accepted synapses only; positions as [x, y, z] nm lists): ``id``
    (the assignment's ``synapse_id``, else the cleft's id) and ``cleft_id`` (the label in ``clefts``)."""
    acc = assigned[assigned["status"] == "accepted"].reset_index(drop=True)

    def points(prefix):
        cols = [f"{prefix}_{axis}" for axis in "xyz"]
        vs = [voxel_size[2], voxel_size[1], voxel_size[0]]
        off = [offset_nm[2], offset_nm[1], offset_nm[0]]
        xyz = acc[cols].to_numpy(float) * vs + off
        return [list(map(float, p)) for p in xyz]

    ids = acc["synapse_id"] if "synapse_id" in acc else acc["id"]
    return pd.DataFrame({
        "id": ids.to_numpy(np.uint64),
        "cleft_id": acc["id"].to_numpy(np.uint64),
        "pre_pt_position": points("pre_pt"),
        "post_pt_position": points("post_pt"),
        "ctr_pt_position": points("ctr"),
        "pre_pt_root_id": acc["pre"].to_numpy(np.uint64),
        "post_pt_root_id": acc["post"].to_numpy(np.uint64),
        "size": acc["voxels"].to_numpy(np.int64),
        "size_nm2": acc["size_nm2"].to_numpy(float),
        "score": acc["score"].to_numpy(float),
        "partner_score": acc["partner_score"].to_numpy(float),
        "cleft_prob": acc["cleft_prob"].to_numpy(float),
        "pre_prob": acc["pre_prob"].to_numpy(float),
        "post_prob": acc["post_prob"].to_numpy(float),
        "pre_contact_voxels": acc["pre_contact"].to_numpy(np.int64),
        "post_contact_voxels": acc["post_contact"].to_numpy(np.int64),
    })
